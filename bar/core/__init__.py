"""Shared plumbing under every other package: paths, bit conventions, collectives over ranks, checksummed files,
progress lines."""
