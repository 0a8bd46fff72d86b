"""Evaluation: FID / IS / precision-recall with torch-fidelity or the ADM protocol, and the offline feature
networks."""
