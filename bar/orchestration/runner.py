"""Run one sweep point (the job side): plan it, hold its lock, open its MLflow run, run its stages in order, and end
the run with its status.

    execute(cfg, multirun) -> {"status": finished | infeasible | failed | skipped, "metric": headline}

The stages, in order (bar.orchestration.stages): tokenizer (train or reuse) -> reconstruction and rFID -> codes ->
generator training -> samples -> gFID / IS / precision / recall; `stage=sample` generates from a checkpoint instead.
The samples a point makes are its SamplingPlan (bar.orchestration.sampling_plan). Stage functions return plain
values; only this module logs them. Several processes (SLURM tasks) run one point together: rank 0 plans and logs,
the others follow (bar.orchestration.tracking.NullRun). How the point's process was started is the launcher's
business (bar.orchestration.launching for launcher=local, submitit otherwise)."""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bar import UserError
from bar.core import distributed, progress
from bar.core.files import disk_full, file_identity
from bar.eval import adm
from bar.orchestration.build import build_generator, sampling_schedule, sampling_temperature
from bar.orchestration.config import point_name, resolved_dict, run_params, tokenizer_signature
from bar.orchestration.cost import TRAIN_FACTOR, generator_flops
from bar.orchestration.evaluators import adm_evaluator, generation_evaluator, reconstruction_evaluator
from bar.orchestration.planner import Plan, plan_point, record_infeasible, try_lock
from bar.orchestration.sampling_plan import SamplingPlan, SamplingRun, sampling_plan
from bar.orchestration.stages import generator as gen_stage
from bar.orchestration.stages import samples
from bar.orchestration.stages import tokenizer as tok_stage
from bar.orchestration.tracking import NullRun, PointRun, record_run
from bar.training.checkpoints import CheckpointDir
from bar.training.loop import PeriodicEval
from bar.training.signals import before_acting_on_stop, install_stop_handlers, stop_requested

log = logging.getLogger("bar")


def execute(cfg: DictConfig, multirun: bool) -> dict:
    """Run one point, in this process, inside its MLflow run (see the module docstring). A user mistake is one line
    on stderr (exit 2 for a single run); any other error ends the run FAILED with the error tag, and in a sweep
    (`multirun`) the others go on."""
    if not multirun and cfg.launcher.name != "local":
        _fail(f"launcher={cfg.launcher.name} launches sweeps: add -m (one point is a sweep of one)", multirun)
    started = time.time()
    if os.environ.get("SLURM_JOB_ID"):
        install_stop_handlers()   # checkpoint at the end of the step, then submitit requeues the job
    try:
        denv = distributed.setup(distributed.resolve_device(cfg.device).type)
    except UserError as err:
        _fail(str(err), multirun)
        return {"status": "failed", "metric": math.nan}
    lock = None
    try:
        plan = _agreed_plan(cfg, multirun, denv.is_main, denv.world_size)
        progress.set_label(plan.name)   # its progress lines say which point they are about
        if cfg.dry_run and not multirun:   # a dry run of one point: its plan, nothing run
            print(f"{plan.name} (signature {plan.signature}): dry run, would {plan.action}"
                  + "".join(f"; {part}" for part in (plan.why, plan.memory and plan.memory.reason, *plan.warnings)
                            if part), file=sys.stderr)
            return {"status": "skipped", "metric": plan.metric}
        if plan.action == "skip":
            print(f"{plan.name}: skipped, {plan.why}", file=sys.stderr)
            return {"status": "skipped", "metric": plan.metric}
        lock = try_lock(plan.folder) if denv.is_main else None
        if denv.is_main and lock is None:
            print(f"{plan.name}: skipped, another job is running it now", file=sys.stderr)
            return {"status": "skipped", "metric": math.nan}
        result = _record_infeasible(cfg, plan, denv) if plan.action == "infeasible" else \
            _run_planned(cfg, plan, denv, started)
        print(f"{plan.name}: {result['status']} in {time.time() - started:.0f} s" + "".join(
            f", {k} {v:.4g}" for k, v in result.get("metrics", {}).items() if k in SUMMARY), file=sys.stderr)
        return result
    except UserError as err:  # found before work, or at run time (e.g. a corrupt input): still one line
        _fail(str(err), multirun)
    except KeyboardInterrupt as err:   # Ctrl-C: its run is marked interrupted (tracking.PointRun)
        if multirun:          # the sweep's driver reports it
            raise
        unrecorded = getattr(err, "unrecorded_end", None)
        print(f"{point_name(cfg)}: interrupted; run the same command again to continue it"
              + (f" ({unrecorded})" if unrecorded else ""), file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        _point_failed(err, multirun)
    finally:
        if lock is not None:
            lock.close()
        if denv.world_size > 1:
            distributed.teardown()
    return {"status": "failed", "metric": math.nan}


SUMMARY = ("gfid", "rfid", "sample_img_per_s")   # what the one-line summary of a finished point shows


def _point_failed(err: Exception, multirun: bool) -> None:
    """A point that failed while it ran (its run already says so, or stays RUNNING when the store could not be
    written). A full disk is one line: nothing was half-written and the next launch continues from the last
    checkpoint. Anything else: a traceback for a single run (exit 1), logged in a sweep, whose other points go on."""
    unrecorded = getattr(err, "unrecorded_end", None)     # the store could not mark the run (tracking.PointRun)
    full = disk_full(err)
    if full is not None:
        where = getattr(full, "filename", None)
        print(f"error: no space left on device{f' writing {where}' if where else ''}: free some space and launch "
              f"again; the point continues from its last checkpoint{f' ({unrecorded})' if unrecorded else ''}",
              file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None
        return
    if unrecorded:
        print(f"warning: {unrecorded}", file=sys.stderr)
    if not multirun:
        raise err
    log.exception("point failed (recorded in MLflow as FAILED; the sweep goes on): %s", err)


def _fail(message: str, multirun: bool) -> None:
    print(f"error: {message}", file=sys.stderr)
    if not multirun:
        raise SystemExit(2)


def _record_infeasible(cfg: DictConfig, plan: Plan, denv) -> dict:
    """A point that cannot run: its run written through tracking alone (rank 0), nothing set up, nothing run."""
    if denv.is_main:
        record_infeasible(cfg, plan)
    return {"status": "infeasible", "metric": math.nan, "metrics": {}}


def _agreed_plan(cfg: DictConfig, multirun: bool, is_main: bool, world_size: int) -> Plan:
    """Rank 0 plans; every rank gets its plan (or its error)."""
    plan, error = None, None
    if is_main:
        try:
            plan = plan_point(cfg, skip_done=multirun and not cfg.force, world_size=world_size)
        except Exception as err:  # a bad config, an unreachable store: every rank raises it
            error = err
    plan, error = distributed.broadcast_object((plan, error))
    if error is not None:
        raise error
    return plan


def _run_planned(cfg: DictConfig, plan: Plan, denv, started: float) -> dict:
    if plan.fresh_start:   # what an earlier, ended attempt left: training checkpoints, sample batches
        CheckpointDir(plan.folder / "generator").clear()
        shutil.rmtree(plan.folder / "samples", ignore_errors=True)
    tags = {"sweep": cfg.experiment, "signature": plan.signature, "profile": cfg.profile.name}
    run = PointRun(cfg.tracking.uri, cfg.experiment, plan.name, tags, cfg.tracking.parent_run_id,
                   resume_run_id=plan.run_id if plan.action == "resume" else None) if denv.is_main else None
    run_id = distributed.broadcast_object(run.run_id if run is not None else None)
    if run is None:
        metrics = run_stages(cfg, NullRun(run_id), plan)
        metrics.pop("_first_step_at", None)
        return {"status": "finished", "metric": headline(metrics)}
    with run:
        record_run(plan.folder, run.run_id, plan.signature, cfg.experiment, plan.name)
        if run.resumed:
            log.info("%s: resuming MLflow run %s", plan.name, run.run_id)
        run.log_params(run_params(cfg))
        run.log_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        try:
            with before_acting_on_stop(run.keep_running):   # tagged before submitit requeues the job
                metrics = run_stages(cfg, run, plan)
        except BaseException:
            if stop_requested():   # SLURM timeout / preemption: checkpointed; the requeued job resumes this run
                run.keep_running(stop_requested())
            raise
        run.log_metrics(_launch_metrics(cfg, started, metrics.pop("_first_step_at", None), run.resumed))
    if run.status == "finished":   # the final weights and samples are saved apart (logged as params)
        CheckpointDir(plan.folder / "generator").clear()
        shutil.rmtree(plan.folder / "samples", ignore_errors=True)
    log.info("%s %s: %s", plan.name, run.status, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return {"status": run.status, "metric": headline(metrics), "metrics": {k: metrics[k] for k in SUMMARY
                                                                           if k in metrics}}


def headline(metrics: dict) -> float:
    """gFID when the point has one, else rFID (tokenizer-only points); NaN when neither."""
    return float(metrics.get("gfid", metrics.get("rfid", math.nan)))


def _launch_metrics(cfg: DictConfig, started: float, first_step_at: float | None, resumed: bool) -> dict:
    """World size, and the launch overhead when the sweeper stamped the submission time (first attempt only)."""
    extra = {"world_size": distributed.world_size()}
    submitted = cfg.launcher.submitted_at
    if submitted and not resumed:
        extra["launch_to_start_s"] = started - submitted
        if first_step_at:
            extra["launch_to_first_step_s"] = first_step_at - submitted
    return extra


# ----------------------------------------------------------------------------------------------------- the stages
def run_stages(cfg: DictConfig, run, plan: Plan) -> dict[str, float]:
    """All stages of one point, in order; logs through `run` and returns the headline metrics."""
    device = distributed.resolve_device(cfg.device)
    distributed.configure_device(device)
    if cfg.num_threads:
        # Small CPU models gain little from a second thread and lose 10x when another process holds a core.
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if cfg.stage == "sample":
        return _sample_from_checkpoint(cfg, device, run, plan)
    train_set, val_set = tok_stage.load_data(cfg)
    tokenizer, metrics = _tokenizer_stages(cfg, train_set, val_set, device, run)
    if cfg.stage == "all":
        first_step = metrics.get("_first_step_at")
        metrics.update(_generator_stages(cfg, tokenizer, train_set, device, run, plan))
        metrics["_first_step_at"] = first_step or metrics["_first_step_at"]
    return metrics


def _tokenizer_stages(cfg: DictConfig, train_set, val_set, device, run):
    """Tokenizer (train or reuse) -> reconstructions -> rFID. Returns (tokenizer, metrics)."""
    # built when first needed, once (the classifier extractor trains a classifier)
    evaluator = functools.cache(lambda: reconstruction_evaluator(cfg, train_set, device))

    def reconstruction(model):
        return tok_stage.reconstruction_scores(model, val_set, evaluator(), device, batch_size=cfg.eval.batch_size,
                                               workers=cfg.data.num_workers)

    def rfid_of(model) -> float | None:          # eval.rfid_every: during training
        return reconstruction(model)[0].get("rfid")

    tokenizer, ckpt, built = tok_stage.obtain_tokenizer(cfg, train_set, device, rfid_of)
    metrics = tok_stage.latent_metrics(tokenizer)
    run.set_tags({"tokenizer_reused": str(not built), "tokenizer_signature": tokenizer_signature(cfg)})
    run.log_params({"tokenizer.file": ckpt["path"]})   # the tokenizer this point used (cache entry or checkpoint)
    run.log_history("tokenizer_loss", ckpt["history"])
    for name, history in ckpt.get("metric_history", {}).items():     # its parts, the discriminator's statistics
        run.log_history(name, history)
    if built:
        metrics["tokenizer_train_img_per_s"] = ckpt["train_img_per_s"]
    run.log_metrics(metrics)
    if built:
        metrics["_first_step_at"] = ckpt["first_step_at"]   # for the launch-overhead metric; not logged as such
    # rFID's judge; once gFID is scored, fid_extractor names gFID's (_sample_and_score: eval.protocol=adm's)
    run.set_tags({"fid_extractor": evaluator().tag, "rfid_extractor": evaluator().tag})
    rec, originals, recons = reconstruction(tokenizer)
    run.log_metrics(rec)
    if cfg.eval.rfid_every and "rfid" in rec:    # the curve: evaluations during training, then the final one
        run.log_history("rfid", [*ckpt.get("rfid_history", []), (cfg.tokenizer.train.steps, rec["rfid"])])
    metrics.update(rec)
    with tempfile.TemporaryDirectory() as tmp:
        tok_stage.save_pairs_grid(originals, recons, Path(tmp) / "recon_grid.png")
        run.log_artifact(Path(tmp) / "recon_grid.png")
    return tokenizer, metrics


def _generator_stages(cfg: DictConfig, tokenizer, train_set, device, run, plan: Plan) -> dict:
    """Codes -> generator training -> samples -> gFID / IS / precision / recall."""
    codes = gen_stage.obtain_codes(cfg, tokenizer, train_set, device)
    torch.manual_seed(cfg.seed)   # the same initial weights whether or not the tokenizer was just trained
    memory = plan.memory
    assert memory is not None, "memory_plan sizes every point of stage=all"
    model = build_generator(cfg, checkpoint_blocks=memory.checkpointing)
    schedule = sampling_schedule(cfg, model)
    run.log_params({f"generator.resolved.{k}": v for k, v in schedule.items()}
                   | {"generator.resolved.temperature": sampling_temperature(cfg, model, schedule),
                      "generator.resolved.micro_batch": memory.micro_batch,
                      "generator.resolved.accum_steps": memory.accum_steps,
                      "generator.resolved.activation_checkpointing": memory.checkpointing})
    metrics = {"mem_estimate_gb": plan.memory_gb, "generator_params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    evaluator = functools.cache(lambda: generation_evaluator(cfg, train_set, device))
    tflop_per_step = TRAIN_FACTOR * generator_flops(cfg)["forward"] * cfg.generator.train.batch_size / 1e12
    sampling, sampler = sampling_plan(cfg), _sampler(cfg, model, tokenizer, schedule, device)
    run.set_tags(_sampling_tags(sampling, sampler))
    hooks = [_periodic_gfid(cfg, sampling.periodic, sampler, train_set, run, evaluator, tflop_per_step)] \
        if sampling.periodic is not None else []
    result = gen_stage.train_generator(cfg, model, codes, device, plan.folder / "generator", memory.accum_steps,
                                       on_checkpoint=lambda r: run.append_history("train_loss", r.history),
                                       extra_hooks=hooks)
    run.append_history("train_loss", result.history)
    metrics["train_img_per_s"] = result.samples_per_s   # train_loss: its history, not a step-0 copy of its end
    if result.start_step:
        run.set_tags({"resumed_from_step": str(result.start_step)})
    if distributed.world_size() > 1:
        prints = distributed.all_gather_objects(gen_stage.weights_fingerprint(model))
        run.set_tags({"weights_by_rank": ",".join(prints), "ranks_in_sync": str(len(set(prints)) == 1)})
    if device.type == "cuda":
        metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    path = Path(cfg.paths.outputs) / "checkpoints" / run.run_id / "generator.pt"
    if distributed.is_main():
        gen_stage.save_generator(model, resolved_dict(cfg), path)
    run.log_params({"generator.checkpoint": str(path)})
    run.log_metrics(metrics)
    metrics.update(_sample_and_score(cfg, sampling, sampler, train_set, run, evaluator()))
    if cfg.eval.gfid_every and "gfid" in metrics:   # the curve's last point: the final evaluation at the last step
        steps = cfg.generator.train.steps
        run.log_metrics({"gfid": metrics["gfid"], "gfid_nocfg": metrics.get("gfid_nocfg"),
                         "train_tflop": tflop_per_step * steps}, step=steps)
    metrics["_first_step_at"] = result.first_step_at   # for the launch-overhead metric; not logged as such
    return metrics


def _sampler(cfg: DictConfig, model, tokenizer, schedule: dict, device) -> samples.Sampler:
    s = cfg.generator.sample
    return samples.Sampler(model, tokenizer, schedule, sampling_temperature(cfg, model, schedule), seed=s.seed,
                           kv_cache=s.kv_cache, compile=cfg.model.compile, precision=s.precision, device=device)


def _sampling_tags(sampling: SamplingPlan, sampler: samples.Sampler) -> dict[str, str]:
    """What the samples were made with beyond the config: the batch the plan fitted to the device's memory (the
    samples follow it) and the precision this device ran generator.sample.precision at."""
    return {"sample_batch_size": str(sampling.final[0].batch_size),
            "sample_precision": samples.effective_precision(sampler.precision, sampler.device)}


def _periodic_gfid(cfg: DictConfig, periodic: SamplingRun, sampler: samples.Sampler, train_set, run, evaluator,
                   tflop_per_step: float) -> PeriodicEval:
    """eval.gfid_every: the plan's periodic samples scored during training; gFID and the training compute so far
    logged at the optimizer step."""
    labels = samples.balanced_labels(periodic.num_samples, cfg.data.num_classes)

    def gfid_of(model, step: int) -> float | None:
        shard = samples.sample_shard(replace(sampler, model=model), periodic, labels)
        scores = evaluator().compare(shard.images, train_set, "train", items=shard.items)
        return scores["fid"] if scores is not None else None

    def log(step: int, gfid: float) -> None:
        run.log_metrics({"gfid": gfid, "train_tflop": tflop_per_step * step}, step=step)

    # a resumed run already has the evaluations its killed attempt made after its last checkpoint: neither made nor
    # logged again, so each step is in the run's history once
    done = distributed.broadcast_object(run.logged_steps("gfid") if distributed.is_main() else None)
    return PeriodicEval(cfg.eval.gfid_every, cfg.generator.train.steps, gfid_of, on_value=log, done=done)


def _sample_and_score(cfg: DictConfig, sampling: SamplingPlan, sampler: samples.Sampler, train_set, run,
                      evaluator) -> dict:
    """The plan's final runs: every rank samples its share; features are gathered and scored on rank 0 (gFID, IS,
    precision, recall of the guided samples, gfid_nocfg of the unguided ones)."""
    made = {r.metric: samples.sample_shard(sampler, r, samples.balanced_labels(r.num_samples, cfg.data.num_classes))
            for r in sampling.final}
    guided = made["gfid"]
    run.set_tags({"fid_extractor": evaluator.tag})   # gFID's judge (eval.protocol=adm: the ADM evaluator's)
    metrics = {"sample_img_per_s": guided.per_s,
               **gen_stage.generation_metrics(evaluator, guided, made.get("gfid_nocfg"), train_set)}
    run.log_metrics(metrics)
    labels = samples.balanced_labels(sampling.final[0].num_samples, cfg.data.num_classes)   # the guided run's
    with tempfile.TemporaryDirectory() as tmp:
        if distributed.is_main() and gen_stage.save_sample_grid(guided.images, labels[guided.items],
                                                                cfg.data.num_classes, Path(tmp) / "sample_grid.png"):
            run.log_artifact(Path(tmp) / "sample_grid.png")
    return metrics


def _sample_from_checkpoint(cfg: DictConfig, device, run, plan: Plan) -> dict[str, float]:
    """stage=sample: generate from a checkpoint (this project's or the release's) into resumable batch files, decode
    with the tokenizer when there is one (tokenizer.checkpoint, or this project's cached tokenizer for the config),
    write the ADM `.npz` and, with eval.protocol=adm, score it."""
    model, official = gen_stage.load_generator_checkpoint(cfg, cfg.checkpoint, device)
    tokenizer = tok_stage.sampling_tokenizer(cfg, device)
    sampling = sampling_plan(cfg)
    (sampling_run,) = sampling.final
    labels = samples.balanced_labels(sampling_run.num_samples, cfg.data.num_classes)
    folder = plan.folder / "samples"
    sampler = _sampler(cfg, model, tokenizer, sampling_schedule(cfg, model), device)
    # batches of another size (planned for another GPU) hold other samples: they are made again
    source = {"weights": file_identity(cfg.checkpoint), "batch_size": sampling_run.batch_size}
    result = samples.generate_batches(sampler, sampling_run, labels, folder, source=source)
    distributed.barrier()
    run.set_tags({"checkpoint_format": "official" if official else "bar", "decoded": str(tokenizer is not None)}
                 | _sampling_tags(sampling, sampler))
    metrics = {"sample_img_per_s": samples.throughput(result), "samples_generated": result["generated"],
               "generator_params": sum(p.numel() for p in model.parameters())}
    if distributed.is_main():
        metrics.update(_write_and_score_samples(cfg, folder, labels, sampling_run.batch_size, run, device,
                                                tokenizer is not None))
    run.log_metrics(metrics)
    return metrics


def _write_and_score_samples(cfg: DictConfig, folder: Path, labels, batch_size: int, run, device,
                             decoded: bool) -> dict:
    """Rank 0: the tokens (tokens.pt), the images as the ADM evaluator's `.npz`, their grid and ADM metrics."""
    batches = len(samples.batch_labels(labels, batch_size))
    out = Path(cfg.paths.outputs) / "samples" / run.run_id
    out.mkdir(parents=True, exist_ok=True)
    tokens = torch.from_numpy(samples.read_batches(folder, batches, "tokens"))
    torch.save({"tokens": tokens, "labels": labels}, out / "tokens.pt")
    run.log_params({"samples.tokens": str(out / "tokens.pt")})
    if not decoded:
        return {}
    npz = samples.assemble_npz(folder, batches, len(labels), out / "samples.npz")
    run.log_params({"samples.npz": str(npz)})
    images = torch.from_numpy(samples.read_batches(folder, min(batches, 4), "images")).permute(0, 3, 1, 2)
    with tempfile.TemporaryDirectory() as tmp:
        if gen_stage.save_sample_grid(images, labels[:len(images)], cfg.data.num_classes,
                                      Path(tmp) / "sample_grid.png"):
            run.log_artifact(Path(tmp) / "sample_grid.png")
    if cfg.eval.protocol != "adm":
        return {}
    evaluator = adm_evaluator(cfg, device)
    run.set_tags({"fid_extractor": evaluator.tag})
    scores = adm.evaluate_adm(npz, evaluator.reference, extractor=evaluator.extractor, batch_size=cfg.eval.batch_size,
                              device=device, reference_features=evaluator.reference_features())
    return {"gfid": scores["gfid"], "sfid": scores["sfid"], "inception_score": scores["inception_score"],
            "precision": scores["precision"], "recall": scores["recall"]}
