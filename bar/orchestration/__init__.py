"""Orchestration: the config schema and composition, planning (signature, skip / resume, memory), the runner and its
stages, the sweep driver, MLflow tracking, the cost model. The only package that reads Hydra / OmegaConf configs."""

from bar.orchestration.resolvers import register_resolvers

register_resolvers()
