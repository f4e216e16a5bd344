"""What a run's checkpoint stores, and the torchvision state dict it stands for.

A checkpoint file (``best.pt``, ``last.pt``) is ``{"format": 2, "model": tensors, "meta": {...}}``.
It stores what the run can use exactly, and no more:

- **The pool folded into the first Linear** (``meta["folded_pool"] = 1``: the map side the fold is
  exact for). A run whose last feature map is 1×1 (inputs of 32–63 px, after five 2×2 max-pools)
  only ever uses the sum over the 49 pooled positions of ``classifier.0.weight``: the adaptive pool
  copies the single value into all 49 cells, so ``W·(x ⊗ 1) = (Σ_p W[:, :, p])·x``. That sum is
  stored, 4096 × 512 (8 MB) instead of 4096 × 25,088 (411 MB); larger inputs store the full weight.
- **A reference for what the run did not change** (``meta["base"]``). A run that froze its
  features (``freeze="features"``) or everything but the last layer (``"all_but_last"``) stores
  only the tensors it trained (frozen batch-norm layers run in eval mode, so their statistics do
  not change either). The others are named by ``base``: ``{"kind": "run", "run_id": ...}`` (that
  run's best.pt), ``{"kind": "imagenet", "file": "vgg11_bn-6002323d.pth"}`` (torchvision's weight
  cache) or ``{"kind": "file", "path": ...}`` (a state dict inside the data or runs dir), with
  ``"keys"``, the names it supplies, and ``"sha256"``, a digest of exactly those tensors, checked on
  every load: a source that is gone or has changed is refused with one line, never guessed at.

``pack`` makes that form (the trainer's checkpoints, ``vgg.train.end_epoch``, with the reference
``reference_for`` made when the training started); ``expand`` turns any checkpoint back into
torchvision's full state dict (``RunStore.load_checkpoint`` and ``vgg.inference``, so every reader
gets it): files of older code, full state dicts without markers, pass through unchanged.
``vgg.runs.torchvision_state`` is what a download offers. Before a run that others refer to is deleted,
``rebase`` moves what they take from it into their own files (``RunStore.delete``), so they still
load and still stand for bitwise the same weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vgg.errors import CheckpointError, PathError, VGGError, WeightsUnavailableError, one_line
from vgg.model import load_pretrained, model_name, weights_cache_dir, weights_file_name
from vgg.paths import resolve_inside, validate_run_id
from vgg.settings import data_dir
from vgg.speedups.fold import FIRST_LINEAR, fold_first_linear, unfold_first_linear

if TYPE_CHECKING:
    from vgg.runs import RunStore
    from vgg.train import TrainConfig

FORMAT = 2  # 1: the full state dict (older code); 2: may be folded and refer to a base
FOLDED_POOL = "folded_pool"  # meta key: classifier.0.weight is stored folded, exact for maps of this side
BASE = "base"  # meta key: where the tensors the run did not change come from
STORAGE_KEYS = (FOLDED_POOL, BASE)
BASE_KINDS = ("run", "imagenet", "file")
MAX_DEPTH = 16  # runs that refer to runs that refer to runs…: deeper than this is refused (a cycle)


def folds(input_size: Any) -> bool:
    """Whether a run at ``input_size`` px stores its first Linear folded: its last map is 1×1."""
    return isinstance(input_size, int) and not isinstance(input_size, bool) and input_size // 32 == 1


def frozen_keys(names: Iterable[str], freeze: str) -> list[str]:
    """The state-dict names a run with freeze mode ``freeze`` never changes: every ``features.*``
    tensor for ``"features"``, all but ``classifier.6.*`` for ``"all_but_last"``, none for ``"none"``."""
    if freeze == "features":
        return [n for n in names if n.startswith("features.")]
    if freeze == "all_but_last":
        return [n for n in names if not n.startswith("classifier.6.")]
    return []


def state_digest(state: Mapping[str, Tensor], keys: Iterable[str]) -> str:
    """SHA-256 (hex) of the names, dtypes, shapes and bytes of ``state[k]`` for ``keys`` (sorted);
    the memory layout (channels_last or not) does not matter."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing


def reference_for(cfg: TrainConfig, state: Mapping[str, Tensor], *,
                  store: RunStore | None) -> dict[str, Any] | None:
    """The ``base`` a run of ``cfg`` refers to for the tensors its freeze mode keeps unchanged,
    ``state`` being its model as training starts (the start weights). None when it trains everything,
    or when the source could still change or not be found again: a run that is still training (or no
    ``store`` to find it in), a file outside the data dir and ``store``'s runs dir. Then its
    checkpoints store every tensor."""
    keys = frozen_keys(state, cfg.freeze)
    if not keys:
        return None
    if cfg.init == "imagenet":
        ref: dict[str, Any] = {"kind": "imagenet", "file": weights_file_name(cfg.config, cfg.batch_norm)}
    elif cfg.init.startswith("run:"):
        run_id = cfg.init.removeprefix("run:")
        if store is None or store.get(run_id).status == "running":  # its best.pt may still be replaced
            return None
        ref = {"kind": "run", "run_id": run_id}
    else:
        roots = [data_dir()] + ([store.root] if store is not None else [])
        try:
            path = resolve_inside(Path(cfg.init).absolute(), *roots)
        except PathError:
            return None
        ref = {"kind": "file", "path": str(path)}
    return {**ref, "keys": keys, "sha256": state_digest(state, keys)}


def pack(state: Mapping[str, Tensor], meta: Mapping[str, Any], *,
         base: Mapping[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """What a checkpoint stores of the full ``state`` (torchvision's names), and ``meta`` with the
    markers that say so: without the tensors ``base`` supplies (``reference_for``), and with the first
    Linear folded when ``meta["input_size"]`` leaves 1×1 maps. ``expand`` undoes it."""
    meta = {k: v for k, v in meta.items() if k not in STORAGE_KEYS}
    stored = dict(state)
    if base is not None:
        supplied = set(base["keys"])
        stored = {k: v for k, v in stored.items() if k not in supplied}
        meta[BASE] = dict(base)
    weight = stored.get(FIRST_LINEAR)
    full_width = weight is not None and weight.dim() == 2 and weight.shape[1] > 512
    if full_width and folds(meta.get("input_size")):
        stored = fold_first_linear(stored)
        meta[FOLDED_POOL] = 1
    return stored, meta


def as_stored(state: Mapping[str, Tensor], meta: Mapping[str, Any], *,
              unchanged: Collection[str] = ()) -> dict[str, Tensor]:
    """A copy of ``state`` as its checkpoint gives it back (``expand(pack(state, meta))``; what a base
    would supply is unchanged anyway). The trainer evaluates its test set on these weights, so a later
    evaluation of ``best.pt`` gives exactly the same answers, not answers equal up to rounding.
    Tensors named in ``unchanged`` (frozen: training never writes them) are shared, not copied."""
    stored, stored_meta = pack(state, meta)
    restored = expand({"model": stored, "meta": stored_meta}, "the checkpoint", store=None)["model"]
    keep = set(unchanged)
    return {k: v.clone() if v is state.get(k) and k not in keep else v for k, v in restored.items()}


# --------------------------------------------------------------------------------------------
# Reading


def expand(checkpoint: Mapping[str, Any], label: str, *, store: RunStore | None, depth: int = 0,
           keys: Collection[str] | None = None) -> dict[str, Any]:
    """``checkpoint`` (``{"model": tensors, "meta": {...}}``, as read from a file) as the full
    torchvision state dict it stands for: ``{"model": state_dict, "meta": meta without the storage
    markers}``. The folded first Linear is expanded, ``base`` resolved (a run's best.pt through
    ``store``, recursively, at most ``MAX_DEPTH`` deep) and checked against its digest. Older
    checkpoints (no markers) come back as they are. ``keys`` limits the state dict to those names
    (what a run that refers to this one takes from it). ``label`` names the file in messages
    ("best.pt of run …"); every problem is a ``CheckpointError`` of one line."""
    meta = dict(checkpoint.get("meta") or {})
    state = {k: v for k, v in checkpoint["model"].items() if keys is None or k in keys}
    folded = meta.pop(FOLDED_POOL, None)
    if folded is not None:
        if folded != 1 or not isinstance(checkpoint["model"].get(FIRST_LINEAR), Tensor):
            shown = one_line(repr(folded), 40)
            raise CheckpointError(f"{label}: meta 'folded_pool' is {shown} but it has no folded "
                                  f"{FIRST_LINEAR}; expected 1 with a (4096, 512) weight")
        if FIRST_LINEAR in state:
            try:
                state = unfold_first_linear(state)
            except ValueError as exc:
                raise CheckpointError(f"{label}: {exc}") from exc
    base = meta.pop(BASE, None)
    if base is not None and (keys is None or not isinstance(base, Mapping)
                             or not set(keys).isdisjoint(base.get("keys") or ())):
        supplied = _base_tensors(base, meta, label, store=store, depth=depth)
        state = {**{k: v for k, v in supplied.items() if keys is None or k in keys}, **state}
    rest = {k: v for k, v in checkpoint.items() if k not in ("model", "meta")}  # "format"
    return {**rest, "model": state, "meta": meta}


def _base_tensors(base: Any, meta: Mapping[str, Any], label: str, *, store: RunStore | None,
                  depth: int) -> dict[str, Tensor]:
    """The tensors ``base`` supplies, resolved and checked against its digest."""
    keys = base.get("keys") if isinstance(base, Mapping) else None
    digest = base.get("sha256") if isinstance(base, Mapping) else None
    if (base.get("kind") if isinstance(base, Mapping) else None) not in BASE_KINDS \
            or not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys) \
            or not isinstance(digest, str):
        raise CheckpointError(f"{label}: meta 'base' is {one_line(base, 80)}; expected a reference of kind "
                              f"{', '.join(BASE_KINDS)} with its 'keys' and 'sha256'")
    source, full = _resolve(base, meta, label, store=store, depth=depth)
    missing = [k for k in keys if k not in full]
    if missing:
        raise CheckpointError(f"{label} takes {missing[0]} from {source}, which does not hold it")
    if state_digest(full, keys) != digest:
        raise CheckpointError(f"{label} takes the {len(keys)} tensors it did not train from {source}, whose "
                              "weights have changed since (their SHA-256 no longer matches); it cannot be "
                              "restored")
    wanted = set(keys)
    return {k: v for k, v in full.items() if k in wanted}


def _resolve(base: Mapping[str, Any], meta: Mapping[str, Any], label: str, *, store: RunStore | None,
             depth: int) -> tuple[str, dict[str, Tensor]]:
    """(a description of the source, its full state dict) for a reference."""
    kind = base["kind"]
    what = "the tensors it did not train"
    if kind == "run":
        run_id = base.get("run_id")
        try:
            validate_run_id(run_id)  # type: ignore[arg-type]
        except PathError as exc:
            raise CheckpointError(f"{label}: meta 'base' names {exc}") from exc
        if store is None:
            raise CheckpointError(f"{label} takes {what} from run {run_id}, but no runs folder was given")
        if depth >= MAX_DEPTH:
            raise CheckpointError(f"{label}: its runs refer to each other more than {MAX_DEPTH} deep "
                                  "(a cycle?)")
        from vgg.runs import RunNotFoundError

        try:
            raw = store.read_checkpoint(run_id, "best")
        except RunNotFoundError as exc:
            raise CheckpointError(f"{label} takes {what} from run {run_id}, which no longer exists "
                                  f"in {store.root}") from exc
        except CheckpointError as exc:
            raise CheckpointError(f"{label} takes {what} from run {run_id}: {exc}") from exc
        expanded = expand(raw, f"best.pt of run {run_id}", store=store, depth=depth + 1,
                          keys=set(base["keys"]))
        return f"run {run_id}", expanded["model"]
    config, batch_norm = meta.get("config"), meta.get("batch_norm")
    if not isinstance(config, str) or not isinstance(batch_norm, bool):
        raise CheckpointError(f"{label}: its meta names no model (config, batch_norm), so its base cannot "
                              "be read")
    try:
        if kind == "imagenet":
            file_name = weights_file_name(config, batch_norm)
            if base.get("file") != file_name:
                named = one_line(base.get("file"), 60)
                raise CheckpointError(f"{label} takes {what} from ImageNet weights {named}, but "
                                      f"{model_name(config, batch_norm)}'s are {file_name}")
            try:
                model, _ = load_pretrained(config, batch_norm=batch_norm, num_classes=None,
                                           allow_download=False)
            except WeightsUnavailableError as exc:
                raise CheckpointError(f"{label} takes {what} from the ImageNet weights {file_name}, which "
                                      f"are not in {weights_cache_dir()}: put that file back there") from exc
            return f"the ImageNet weights {file_name}", model.state_dict()
        roots = [data_dir()] + ([store.root] if store is not None else [])
        try:
            path = resolve_inside(str(base.get("path")), *roots)
        except PathError as exc:
            raise CheckpointError(f"{label}: its base file is not read: {exc}") from exc
        if not path.is_file():
            raise CheckpointError(f"{label} takes {what} from the weights file {path}, which no longer "
                                  "exists")
        model, _ = load_pretrained(config, batch_norm=batch_norm, num_classes=None, weights_path=path)
        return f"the weights file {path}", model.state_dict()
    except CheckpointError:
        raise
    except VGGError as exc:  # A-LRN and C have no ImageNet weights; a file for another model
        raise CheckpointError(f"{label}: its base cannot be read: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Deleting


def refers_to(meta: Mapping[str, Any], run_id: str) -> bool:
    """Whether a checkpoint whose stored ``meta`` this is takes tensors from run ``run_id``."""
    base = meta.get(BASE)
    return isinstance(base, Mapping) and base.get("kind") == "run" and base.get("run_id") == run_id


def rebase(checkpoint: Mapping[str, Any], label: str, *, store: RunStore) -> dict[str, Any]:
    """``checkpoint`` (as read from its file; it refers to run S) made independent of S: the tensors it
    takes from S's best.pt are moved into it as S stores them (S's folded first Linear stays folded),
    and what S itself takes from its own base is referred to there instead. It stands for bitwise the
    same state dict. The reference is checked first: one that no longer resolves → ``CheckpointError``."""
    meta = dict(checkpoint.get("meta") or {})
    base = meta.get(BASE)
    if not isinstance(base, Mapping) or base.get("kind") != "run":
        return dict(checkpoint)
    _base_tensors(base, meta, label, store=store, depth=0)  # it resolves today, so the result will too
    source_id = str(base["run_id"])
    source = store.read_checkpoint(source_id, "best")
    source_meta, source_model = source.get("meta") or {}, source["model"]
    keys = list(base["keys"])
    model = dict(checkpoint["model"])
    taken = [k for k in keys if k in source_model]
    for key in taken:
        model[key] = source_model[key]
    if FIRST_LINEAR in taken and source_meta.get(FOLDED_POOL) is not None:
        meta[FOLDED_POOL] = source_meta[FOLDED_POOL]
    del meta[BASE]
    rest = [k for k in keys if k not in source_model]
    if rest:  # what S takes from its own base: refer there (a subset needs its own digest)
        source_base = dict(source_meta[BASE])
        digest = source_base["sha256"]
        if set(rest) != set(source_base["keys"]):
            supplied = _base_tensors(source_base, source_meta, f"best.pt of run {source_id}", store=store,
                                     depth=1)
            digest = state_digest(supplied, rest)
        meta[BASE] = {**source_base, "keys": rest, "sha256": digest}
    return {**dict(checkpoint), "format": FORMAT, "model": model, "meta": meta}
