"""The training loop (docs/architecture.md, "Training"): plain PyTorch, one code path for CPU, one GPU and torchrun.

Run directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (every logged step: step, lr, loss and each
objective term, throughput; every validation), TensorBoard events, ``last.safetensors`` + ``last_state.pt``
(resume), ``best.safetensors`` (best validation R@1), ``results.json`` (final test of the best checkpoint),
``data_report.json`` (inputs that could not be used).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .. import distributed as dist_utils
from ..config import Config, ConfigError, config_to_dict, resolve_compat
from ..data.loader import collate
from ..evaluate.geometry import split_geometry
from ..evaluate.protocol import evaluate_encoded, needs_words
from ..io import atomic_write
from ..model.checkpoint import read_checkpoint
from ..model.factory import load_model
from ..model.gare import GareModel
from ..model.weights import load_state_dict_strict
from ..objectives import gare_loss
from ..pipeline import encode_split, load_data, resolve_device, train_dataset, training_pairs, video_dataset
from ..threads import apply_threads
from .checkpoint import load_training_state, save_training_checkpoint
from .data import EpochSampler, SeededItems, make_loader
from .diagnose import step_diagnostics
from .features import FeaturePairDataset, encode_split_cached, feature_collate, load_features
from .optim import build_optimizer, current_lr

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision in ("bf16", "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def apply_release_model_switches(model: GareModel, cfg: Config, device: torch.device) -> bool:
    """The release's model-side training switches: frozen patch embedding (``release.freeze_conv1``) and CLIP
    weights stored in fp16 (``release.fp16_weights`` on CUDA only, as the release; ``fp16_weights_anywhere``
    on any device). Returns whether the weights are fp16 (then no autocast and no loss scaling)."""
    rel = resolve_compat(cfg).release
    if rel.freeze_conv1:
        model.backbone.freeze_patch_embedding()
    fp16 = rel.fp16_weights_anywhere or (rel.fp16_weights and torch.device(device).type == "cuda")
    if fp16:
        model.backbone.to_release_fp16()
    return fp16


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_033 + step * 97) % (2**31 - 1)


class Trainer:
    def __init__(self, cfg: Config, *, show_progress: bool = True):
        self.cfg = cfg = resolve_compat(cfg)
        self.device = resolve_device(cfg.train.device)
        self.dist = dist_utils.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        tc = cfg.train
        if tc.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the {self.dist.world_size} ranks")
        self.run_dir = Path(tc.output_dir)
        self.show_progress = show_progress and self.dist.is_main
        if self.device.type == "cpu":
            apply_threads(tc.threads)
        torch.manual_seed(tc.seed)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier()

        self.model = GareModel(cfg.model).to(self.device)
        self.fp16_weights = apply_release_model_switches(self.model, cfg, self.device)
        if tc.freeze_backbone or tc.features:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.loss_cfg = cfg.loss
        self.amp_dtype = None if self.fp16_weights else autocast_dtype(tc.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self._setup_data()
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.schedule_steps)
        self.ddp = (DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.dist.enabled and any(p.requires_grad for p in self.model.parameters()) else None)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best = {"R1": -1.0, "step": -1}
        self.history: list[dict] = []
        self._tb = None
        if tc.resume:
            self._resume()

    # -- data ---------------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        cfg, tc = self.cfg, self.cfg.train
        size = self.model.image_size
        self.data = load_data(cfg, image_size=size)
        train_split = self.data.splits["train"]
        pairs, self.corrupted = training_pairs(cfg, train_split)
        self.collate = collate
        if tc.features:
            self.features = load_features(tc.features, self.model, cfg, self.data)
            if cfg.model.compat == "release":
                log.warning("release.padded_frames with cached features: padded slots are zero vectors here, not "
                            "the CLIP encoding of a zero image as in the release (train end to end for that)")
            ds = FeaturePairDataset(self.features, train_split, pairs, words=needs_words(self.model))
            self.collate = feature_collate
        else:
            self.features = None
            ds = train_dataset(cfg, pairs, image_size=size, data=self.data, report=self.run_dir)
        self.train_ds = SeededItems(ds, tc.seed)
        self.sampler = EpochSampler(len(ds), tc.batch_size, tc.seed, self.dist.rank, self.dist.world_size)
        per_epoch = self.sampler.batches_per_epoch()
        if per_epoch == 0:
            raise ConfigError(f"train.batch_size={tc.batch_size} exceeds the {len(ds)} training pairs")
        self.steps_per_epoch = per_epoch
        self.total_steps = tc.max_steps if tc.max_steps else max(1, int(math.ceil(tc.epochs * per_epoch)))
        # the release's schedule length is the steps of 5 epochs, whatever the epoch count
        self.schedule_steps = (max(1, int(math.ceil(cfg.release.schedule_epochs * per_epoch)))
                               if cfg.release.optimizer else self.total_steps)
        self.video_ds = {s: video_dataset(cfg, s, image_size=size, data=self.data, report=self.run_dir)
                         for s in ("val", "test")}
        self.tokenize = self.model.backbone.tokenize

    # -- resume ---------------------------------------------------------------------------------------
    def _resume(self) -> None:
        state = load_training_state(self.run_dir)
        if state is None:
            log.info("resume=true but %s has no checkpoint yet: starting from scratch", self.run_dir)
            return
        tensors, _ = read_checkpoint(self.run_dir / "last.safetensors")
        load_state_dict_strict(self.model, tensors, source=str(self.run_dir / "last.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = state["best"]
        log.info("resumed from step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_in_epoch)

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.cfg.train.tensorboard:
            if self._tb is None:
                # lazy on purpose: tensorboard is optional and slow to import; runs with train.tensorboard=false skip it
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        d = config_to_dict(self.cfg)
        d["_run"] = {"world_size": self.dist.world_size, "device": str(self.device), "decoder": self.cfg.data.decoder,
                     "framerate": self.cfg.data.framerate, "total_steps": self.total_steps,
                     "schedule_steps": self.schedule_steps, "fp16_weights": self.fp16_weights,
                     "steps_per_epoch": self.steps_per_epoch, "torch": str(torch.__version__),
                     "amp": str(self.amp_dtype), "corrupted_captions": len(self.corrupted)}
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(d, sort_keys=False))

    # -- one step -------------------------------------------------------------------------------------
    def _forward_loss(self, batch: dict):
        module = self.ddp if self.ddp is not None else self.model
        gather = None
        if self.dist.enabled:
            gather = (dist_utils.all_gather_local_grad if self.cfg.release.gather_grad
                      else dist_utils.all_gather_with_grad)
        gnog = dist_utils.all_gather_nograd if self.dist.enabled else None
        mask = batch["mask"].to(self.device)
        kw = dict(mask=mask, gather=gather, gather_nograd=gnog)
        if self.features is not None:
            kw.update(text_features=batch["text_features"].to(self.device),
                      frame_features=batch["frame_features"].to(self.device))
            if "word_features" in batch:
                kw.update(word_features=batch["word_features"].to(self.device),
                          word_mask=batch["word_mask"].to(self.device))
        else:
            ids = self.tokenize(batch["caption"]).to(self.device)
            kw.update(ids=ids, frames=batch["frames"].to(self.device))
        vid = batch["video_index"].to(self.device)
        if self.dist.enabled:
            vid = dist_utils.all_gather_nograd(vid)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = module(**kw)
        sim = out.sim.float()
        delta = out.delta.float() if out.delta is not None else None
        corrected = out.corrected if self.loss_cfg.lambda_gs > 0 else None
        total, terms = gare_loss(sim, delta, self.model.logit_scale, self.loss_cfg, corrected=corrected,
                                 video_ids=vid)
        return total, terms, out, vid

    def train_step(self, batch: dict) -> dict:
        tc = self.cfg.train
        self.model.train()
        torch.manual_seed(step_seed(tc.seed, self.step))  # dropout: same stream after a resume
        t0 = time.perf_counter()
        total, terms, out, vid = self._forward_loss(batch)
        if not torch.isfinite(total):
            vals = {k: float(v) for k, v in terms.items()}
            raise TrainingDiverged(
                f"non-finite loss at step {self.step} (terms {vals}); stopped. The last good checkpoint is "
                f"{self.run_dir / 'last.safetensors'} (resume with train.resume=true after lowering train.lr)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else torch.tensor(0.0)
        diag = {}
        if tc.diagnostics and self.dist.is_main and self.step % tc.log_every == 0:
            diag = self._diagnostics(batch, out, vid)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=math.log(tc.logit_scale_max))
        dt = time.perf_counter() - t0
        rec = {"kind": "train", "step": self.step, "epoch": self.epoch,
               "lr": current_lr(self.optimizer.param_groups[0]),
               "lr_new": self._lr_of("new"), "lr_clip": self._lr_of("clip"), "loss": float(total.detach()),
               **{k: float(v) for k, v in terms.items()}, "grad_norm": float(gnorm),
               "logit_scale": float(self.model.logit_scale.detach().exp()),
               "samples_per_s": tc.batch_size / max(dt, 1e-9)}
        rec.update(diag)
        return rec

    def _lr_of(self, prefix: str) -> float | None:
        for g in self.optimizer.param_groups:
            if g.get("name", "").startswith(prefix):
                return current_lr(g)
        return None

    def _diagnostics(self, batch, out, vid) -> dict:
        try:
            return step_diagnostics(self, batch, out, vid)
        except Exception as e:  # noqa: BLE001 - diagnostics must never stop training
            log.warning("diagnostics failed at step %d: %s", self.step, e)
            return {}

    # -- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, split: str, model: GareModel | None = None):
        """The evaluation embeddings of a split (:class:`EncodedSplit`): from the feature cache in
        cached-feature mode (the towers are not run), else by encoding the split's texts and videos."""
        model = model or self.model
        model.eval()
        if self.features is not None:
            return encode_split_cached(model, self.features, self.data.splits[split], words=needs_words(model),
                                       batch_size=self.cfg.train.eval_batch_size)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return encode_split(model, self.cfg, split, data=self.data, videos=self.video_ds[split],
                                rank=self.dist.rank, world=self.dist.world_size)

    @torch.no_grad()
    def evaluate(self, split: str, model: GareModel | None = None, **kw) -> dict:
        model = model or self.model
        return evaluate_encoded(model, self.encode(split, model), **kw)

    def _validate(self) -> dict:
        enc = self.encode("val")
        res = evaluate_encoded(self.model, enc)
        rec = {"kind": "val", "step": self.step, "epoch": self.epoch, **{f"t2v_{k}": v for k, v in res["t2v"].items()},
               **{f"v2t_{k}": v for k, v in res["v2t"].items()}}
        if self.cfg.train.geometry and self.dist.is_main:
            rec.update(self._geometry(enc))
        self._log(rec)
        if res["t2v"]["R1"] > self.best["R1"]:
            self.best = {"R1": res["t2v"]["R1"], "step": self.step}
            if self.dist.is_main:
                self.model.save(self.run_dir / "best.safetensors",
                                extra_metadata={"run_config": json.dumps(config_to_dict(self.cfg)),
                                                "step": str(self.step)})
        return res

    def _geometry(self, enc) -> dict:
        """``geo_*``: modality-gap measures of an encoded split (:func:`gare.evaluate.geometry.split_geometry`)."""
        try:
            geo = split_geometry(self.model, enc.t, enc.v, enc.mask, enc.query_video, words=enc.words,
                                 word_mask=enc.word_mask)
        except Exception as e:  # noqa: BLE001 - a measurement must never stop training
            log.warning("validation geometry failed at step %d: %s", self.step, e)
            return {}
        return {f"geo_{k}": float(v) for k, v in geo.items()}

    def _checkpoint(self) -> None:
        if self.dist.is_main:
            save_training_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, step=self.step,
                                     epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, best=self.best,
                                     run_config=config_to_dict(self.cfg), scaler=self.scaler)
        dist_utils.barrier()

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, *, final_test: bool = True, stop_after: int | None = None) -> dict:
        """Train to ``total_steps`` (``stop_after``: stop early after that many steps of this call,
        as if killed, used by the resume test). Returns the results dict."""
        tc = self.cfg.train
        self._write_config()
        eval_every = tc.eval_every or self.steps_per_epoch
        save_every = tc.save_every or eval_every
        bar = None
        if self.show_progress:
            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.name, dynamic_ncols=True)
        t_start = time.perf_counter()
        done_here = 0
        while self.step < self.total_steps:
            self.sampler.epoch = self.epoch
            self.train_ds.epoch = self.epoch
            self.sampler.start_batch = self.batch_in_epoch
            loader = make_loader(self.train_ds, batch_size=tc.batch_size // self.dist.world_size,
                                 sampler=self.sampler, workers=self.cfg.data.workers, collate=self.collate)
            for batch in loader:
                rec = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                done_here += 1
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                if (self.step - 1) % tc.log_every == 0 or self.step == self.total_steps:
                    self._log(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", nce=f"{rec['nce']:.3f}", lr=f"{rec['lr']:.2e}")
                last = self.step == self.total_steps
                if self.step % eval_every == 0 or last:
                    self._validate()
                if self.step % save_every == 0 or last:
                    self._checkpoint()
                if last or (stop_after is not None and done_here >= stop_after):
                    break
            if stop_after is not None and done_here >= stop_after:
                break
        if bar is not None:
            bar.close()
        results = {"best_val": self.best, "train_seconds": time.perf_counter() - t_start, "steps": self.step}
        if final_test and self.step >= self.total_steps:
            best_path = self.run_dir / "best.safetensors"
            dist_utils.barrier()
            best = load_model(best_path, device=self.device) if best_path.exists() else self.model
            results["test"] = self.evaluate("test", model=best)
            if self.dist.is_main:
                atomic_write(self.run_dir / "results.json", json.dumps(results, indent=2))
        self._write_data_report()
        if self._tb is not None:
            self._tb.close()
        return results

    def _write_data_report(self) -> None:
        if not self.dist.is_main:
            return
        report = {"corrupted_captions": len(self.corrupted)}
        rep = getattr(self.data.store, "report", None)
        if rep is not None and hasattr(rep, "to_dict"):
            report["frame_store"] = rep.to_dict()
        atomic_write(self.run_dir / "data_report.json", json.dumps(report, indent=2))


def train(cfg: Config, **kw) -> dict:
    trainer = Trainer(cfg, **kw)
    try:
        return trainer.fit()
    finally:
        dist_utils.cleanup()
