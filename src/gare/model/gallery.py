"""VideoGallery: the cached per-video score bases of a set of encoded videos.

GARE's exact score meets a text only through ``(3F + 1) D`` products with per-video vectors plus
``O(F^2)`` contractions (docs/performance.md, section 1). Everything else that depends on a video alone
(its psi keys and values, LayerNorm Gram matrices, frame Gram) is computed once by
``GareModel.gallery(v, video_mask)`` and kept here, so each later query pays only its own part.

The object is plain data: named tensors whose first axis is the video, plus a small header (format,
sizes, scorer options and a fingerprint of the model weights that built it). It slices by video index
(``g[idx]``), moves with ``.to(device)``, concatenates (``VideoGallery.cat``) and round-trips through a
flat tensor dict (``state_dict()`` / ``from_state_dict()``) that safetensors can store and memory-map.
The algebra that builds and scores it lives in :mod:`gare.model.fast_scorer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

GALLERY_FORMAT = "gare-gallery-v1"
_META_KEY = "__meta__"
ROW_FIELDS = ("tx", "k0", "v_last")  # the D-sized rows per video that each query reads


@dataclass
class VideoGallery:
    """Per-video score bases (``N`` videos, ``F`` frames, ``L = F`` context rows, ``M = heads * L``).

    Which tensors are present depends on the scorer options (``None`` otherwise); see
    :func:`gare.model.fast_scorer.build_gallery`.
    """

    meta: dict  # format, dim, frames, heads, layers, scorer options, fingerprint of the model weights
    tx: Tensor  # [N, F + 1, D] the frames (temporal outputs) and, last, their masked mean vbar
    vv: Tensor  # [N] |vbar|^2
    mv: Tensor  # [N] mean of vbar's entries
    vv_c: Tensor  # [N] |C vbar|^2 (C: centring)
    mask: Tensor | None = None  # [N, F] bool, True = valid frame (None: no padding)
    ff: Tensor | None = None  # [N, F, F] frame Gram (text pooling)
    zx: Tensor | None = None  # [N, F, S] frames x Delta's shared rows (text pooling) or [N, S, 1] vbar x them
    sk: Tensor | None = None  # [N, F] single-head psi: 1 / sigma of each frame's layer-0 LN1 (queries meet tx)
    sv: Tensor | None = None  # [N, F] single-head psi: the same with the last layer's LN1 eps
    k0: Tensor | None = None  # [N, L, D] multi-head: layer-0 keys / sqrt(d_h), head h in columns h*d_h ..
    kv: Tensor | None = None  # [N, M] <W_q[h] (g1 * C vbar), k0_hl> (gap query)
    ck: Tensor | None = None  # [N, M] <W_q[h] b1 + b_q[h], k0_hl>
    v_last: Tensor | None = None  # [N, L, D] multi-head: values of the last psi layer (head blocks as k0)
    stacks: list[Tensor] = field(default_factory=list)  # per psi layer [N, 3M + S2 + S3 + Sn + E (or H'L), M]
    qkz: list[Tensor] = field(default_factory=list)  # per psi layer but the last [N, H'L, S'] shared-row logits

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tx.shape[0]

    @property
    def dim(self) -> int:
        return self.tx.shape[2]

    @property
    def frames(self) -> int:
        return self.tx.shape[1] - 1

    @property
    def vbar(self) -> Tensor:
        """``[N, D]`` mean of the valid frames (the first-stage embedding)."""
        return self.tx[:, -1]

    @property
    def dtype(self) -> torch.dtype:
        return self.tx.dtype

    @property
    def device(self) -> torch.device:
        return self.tx.device

    def frames_and_mask(self) -> tuple[Tensor, Tensor | None]:
        """The temporal outputs ``[N, F, D]`` (a view) and frame mask ``[N, F]`` the gallery was built from."""
        return self.tx[:, :-1], self.mask

    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    # -- tensor plumbing -----------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """Every tensor by name (list entries as ``stacks.0``, ``qkz.0``, ...), without copies."""
        out = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, Tensor):
                out[f.name] = val
            elif isinstance(val, list):
                out.update({f"{f.name}.{i}": x for i, x in enumerate(val)})
        return out

    def apply(self, fn) -> VideoGallery:
        """A gallery with ``fn`` applied to every tensor (the header is copied)."""
        kw = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, Tensor):
                kw[f.name] = fn(val)
            elif isinstance(val, list):
                kw[f.name] = [fn(x) for x in val]
            elif f.name == "meta":
                kw[f.name] = dict(val)
            else:
                kw[f.name] = val
        return VideoGallery(**kw)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VideoGallery:
        """Move to ``device``; with ``dtype`` (float32/float16/bfloat16) cast the float tensors (the mask
        stays bool)."""
        def move(x: Tensor) -> Tensor:
            if dtype is not None and x.is_floating_point():
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)
        return self.apply(move)

    def rows_as(self, dtype: torch.dtype) -> VideoGallery:
        """The ``D``-sized rows (``tx``, ``k0``, ``v_last``: nearly all the bytes) cast to ``dtype``; the
        small per-video matrices and statistics stay as they are (Gram entries can exceed float16's range)."""
        g = self.apply(lambda x: x)
        for name in ROW_FIELDS:
            x = getattr(g, name)
            if x is not None:
                setattr(g, name, x.to(dtype))
        return g

    def __getitem__(self, idx) -> VideoGallery:
        """The videos ``idx`` (slice, int list or long/bool tensor), in that order. Slices are views."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(idx, None)
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(idx, Tensor):
            idx = idx.to(self.device)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
            idx = idx.long()
            return self.apply(lambda x: x.index_select(0, idx))
        return self.apply(lambda x: x[idx])

    @staticmethod
    def cat(parts: list[VideoGallery]) -> VideoGallery:
        """Concatenate galleries built by the same model with the same options (e.g. index shards)."""
        if not parts:
            raise ValueError("VideoGallery.cat needs at least one gallery")
        head = parts[0]
        for p in parts[1:]:
            if p.meta != head.meta:
                raise ValueError("cannot concatenate galleries built by different models or options: "
                                 f"{_meta_diff(head.meta, p.meta)}")
        if any(p.mask is None for p in parts) and any(p.mask is not None for p in parts):
            parts = [p if p.mask is not None else p._with_full_mask() for p in parts]
        kw = {"meta": dict(head.meta)}
        for f in fields(head):
            if f.name == "meta":
                continue
            val = getattr(head, f.name)
            if isinstance(val, Tensor):
                kw[f.name] = torch.cat([getattr(p, f.name) for p in parts])
            elif isinstance(val, list):
                kw[f.name] = [torch.cat([getattr(p, f.name)[i] for p in parts]) for i in range(len(val))]
            else:
                kw[f.name] = None
        return VideoGallery(**kw)

    def _with_full_mask(self) -> VideoGallery:
        g = self.apply(lambda x: x)
        g.mask = torch.ones(len(self), self.frames, dtype=torch.bool, device=self.device)
        return g

    # -- serialisation -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Flat ``{name: tensor}`` (contiguous, the header as a uint8 JSON tensor under ``__meta__``):
        ``safetensors.torch.save_file(g.state_dict(), path)`` stores it."""
        out = {k: v.contiguous() for k, v in self.tensors().items()}
        out[_META_KEY] = torch.frombuffer(bytearray(json.dumps(self.meta, sort_keys=True).encode()),
                                          dtype=torch.uint8)
        return out

    @staticmethod
    def from_state_dict(sd: dict[str, Tensor]) -> VideoGallery:
        """Inverse of :meth:`state_dict` (the tensors are used as given: memory-mapped ones stay mapped)."""
        if _META_KEY not in sd:
            raise ValueError("not a gallery state dict (no __meta__ entry); build one with model.gallery(v)")
        meta = json.loads(bytes(sd[_META_KEY].cpu().numpy().tobytes()).decode())
        if meta.get("format") != GALLERY_FORMAT:
            raise ValueError(f"gallery format {meta.get('format')!r} is not {GALLERY_FORMAT!r}: rebuild it with "
                             "model.gallery(v) (or `gare index --update` for an index)")
        kw: dict = {"meta": meta, "stacks": [], "qkz": []}
        names = {f.name for f in fields(VideoGallery)}
        for k, v in sd.items():
            if k == _META_KEY:
                continue
            base, _, num = k.partition(".")
            if base not in names:
                raise ValueError(f"unknown gallery entry {k!r}")
            if num:
                lst = kw[base]
                i = int(num)
                lst.extend([None] * (i + 1 - len(lst)))
                lst[i] = v
            else:
                kw[base] = v
        for name in ("tx", "vv", "mv", "vv_c"):
            if name not in kw:
                raise ValueError(f"gallery state dict lacks {name!r}")
        return VideoGallery(**kw)


def _meta_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def check_compatible(meta: dict, expected: dict) -> None:
    """Raise ``ValueError`` naming the difference when a gallery was built by another model or options."""
    if meta != expected:
        raise ValueError("this gallery was built by a different model or scorer configuration ("
                         f"{_meta_diff(meta, expected)}); rebuild it with model.gallery(v, video_mask)")
