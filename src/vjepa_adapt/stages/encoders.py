"""Which encoder a stage starts from: the device, the frozen weights, a random-init model.

Also the pre-check of a weights source (``check_weights_source``): what can be known without loading
the model — the path exists and is a folder/file of a kind ``models.vjepa.load_model`` reads, a Hub id
is well formed and, offline or without network, is in the Hugging Face cache. Stages that load the
frozen encoder declare ``check_frozen_weights`` as a requirement, so the graph runs it before any work.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import torch

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import UserError, WeightsError
from vjepa_adapt.progress import get_logger

log = get_logger("stages")


def resolve_device(cfg: PipelineConfig) -> str:
    if cfg.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device=cuda but no CUDA device is visible; use run.device=cpu or auto")
    return cfg.run.device


def check_device(cfg: PipelineConfig) -> None:
    """Requirement of the stages that compute on ``run.device`` (trainers, embed, probe, VLM tags, RAFT)."""
    resolve_device(cfg)


def _setup_threads(cfg: PipelineConfig) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)


# ---------------------------------------------------------------------------- weights pre-check

# What models/vjepa.py load_model reads, in its order: an existing folder (HF format), an existing
# file (official .pt, toolkit checkpoint, safetensors), else a Hub id "owner/name".
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt", ".safetensors")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
_EXPECTED = ("a Hub id such as facebook/vjepa2-vitl-fpc64-256, a Hugging Face model folder (config.json + "
             "model.safetensors), an official V-JEPA 2 .pt checkpoint or a vjepa-adapt checkpoint")
_TRUE = {"1", "on", "yes", "true"}


def check_frozen_weights(cfg: PipelineConfig) -> None:
    """Requirement of every stage that loads the frozen encoder: ``model.weights``, or the demo's base."""
    if cfg.model.weights:
        check_weights_source(cfg.model.weights)
    elif cfg.data.clips:
        raise UserError("model.weights: required for real clips (a Hub id such as facebook/vjepa2-vitl-fpc64-256, "
                        "an HF folder or an official .pt); the packaged base exists only for the demo world")
    elif not (packaged_base() / "config.json").exists():
        raise WeightsError(f"the packaged demo base is missing from {packaged_base()}: train and ship it with "
                           "`vjepa-adapt base --out runs/base --ship`, or set model.weights")


def check_weights_source(source: str, field: str = "model.weights") -> None:
    """Raise ``WeightsError`` (one line, naming ``field``) for a source that cannot load; cheap, loads nothing."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(f"{field}: {source} is a folder without config.json; expected {_EXPECTED}")
        if not any((path / f).is_file() for f in HF_WEIGHT_FILES):
            raise WeightsError(f"{field}: {source} has config.json but no weights file "
                               f"({' / '.join(HF_WEIGHT_FILES)})")
        return
    if path.is_file():
        _check_weights_file(path, field)
        return
    if not _is_hub_id(source):
        if source.count("/") == 1 and not source.startswith(("/", ".", "~")) and not source.endswith(
                WEIGHT_FILE_SUFFIXES):
            raise WeightsError(f"{field}: {source!r} is neither an existing path nor a valid Hub id (owner/name of "
                               f"letters, digits, '-', '_', '.'); expected {_EXPECTED}")
        raise WeightsError(f"{field}: {source!r} does not exist; expected {_EXPECTED}")
    check_hub_model(source, field)


def _is_hub_id(source: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    # the rule load_model uses (owner/name, no weight-file suffix), then the Hub's own syntax check
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) or source.endswith(WEIGHT_FILE_SUFFIXES):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def _check_weights_file(path: Path, field: str) -> None:
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise WeightsError(f"{field}: {path} is not a known weights file (suffix {path.suffix or 'none'}; "
                           f"expected one of {', '.join(WEIGHT_FILE_SUFFIXES)}, or a folder / Hub id)")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{field}: {path} is empty")
    with open(path, "rb") as fh:
        head = fh.read(512)
        if path.suffix.lower() == ".safetensors":
            # 8-byte little-endian header length, then a JSON object
            n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
            ok = 2 <= n <= size - 8
            if ok:
                fh.seek(8)
                try:
                    ok = isinstance(json.loads(fh.read(n)), dict)
                except (UnicodeDecodeError, ValueError):
                    ok = False
            if not ok:
                raise WeightsError(f"{field}: {path} is not a safetensors file (bad header)")
            return
    # torch.load reads a zip archive (torch >= 1.6), a legacy pickle stream, or a legacy tar
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head[257:262] == b"ustar"):
        raise WeightsError(f"{field}: {path} is not a PyTorch checkpoint (neither a torch zip archive nor a "
                           "pickle); expected " + _EXPECTED)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache the loader will use (read from the environment now, as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def check_hub_model(repo_id: str, field: str) -> None:
    """A Hub model must be in the cache, or (online) exist on the Hub; HF_HUB_OFFLINE=1 forbids the network."""
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache), str):
        return  # cached (the loader reports any missing weight file by name)
    hint = (f"pre-download it on a machine with internet (`HF_HOME=... huggingface-cli download {repo_id}`) with "
            "the same HF_HOME, or pass a local folder")
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").lower() in _TRUE]
    if offline:
        raise WeightsError(f"{field}: {repo_id} is not in the Hugging Face cache ({cache}) and {offline[0]}=1; {hint}")
    status, detail = _hub_status(repo_id)
    if status == "missing":
        raise WeightsError(f"{field}: no model {repo_id!r} on the Hugging Face Hub (no config.json there); "
                           f"check the id, e.g. facebook/vjepa2-vitl-fpc64-256")
    if status == "gated":
        raise WeightsError(f"{field}: {repo_id} is gated on the Hugging Face Hub: accept its terms and set HF_TOKEN")
    if status == "unreachable":
        raise WeightsError(f"{field}: {repo_id} is not in the Hugging Face cache ({cache}) and the Hub cannot be "
                           f"reached ({detail}); {hint}")


def _hub_status(repo_id: str, timeout_s: float = 10.0) -> tuple[str, str]:
    """('found' | 'missing' | 'gated' | 'unreachable', detail): is config.json on the Hub? Bounded in time."""
    result: list[tuple[str, str]] = []

    def probe() -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            result.append(("found", "") if HfApi().file_exists(repo_id, "config.json") else ("missing", ""))
        except GatedRepoError:
            result.append(("gated", ""))
        except RepositoryNotFoundError:
            result.append(("missing", ""))
        except Exception as e:  # noqa: BLE001 - any network failure means "not reachable"; the text is shown
            result.append(("unreachable", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return result[0] if result else ("unreachable", f"no answer within {timeout_s:.0f} s")


# ---------------------------------------------------------------------------- which encoder


def packaged_base() -> Path:
    """The demo's base encoder shipped with the package (see ``stages/base.py``)."""
    from importlib import resources

    return Path(str(resources.files("vjepa_adapt") / "assets" / "demo_base"))


def uses_packaged_base(cfg: PipelineConfig) -> bool:
    """The synthetic world without model.weights: every arm starts from the packaged base."""
    return not (cfg.model.weights or cfg.data.clips)


def frozen_weights(cfg: PipelineConfig) -> str:
    """The encoder every arm starts from: model.weights, or (demo world) the packaged base."""
    if cfg.model.weights:
        return cfg.model.weights
    return str(packaged_base())


def frozen_fingerprint(cfg: PipelineConfig) -> dict | None:
    """What the frozen encoder depends on outside the config: the packaged base's own record."""
    if not uses_packaged_base(cfg):
        return None  # model.weights is part of the stage's config hash
    record = packaged_base() / "base.json"
    if not record.exists():
        return {"packaged_base": None}
    import hashlib

    return {"packaged_base": hashlib.sha256(record.read_bytes()).hexdigest()[:16]}


def _perf(model, cfg: PipelineConfig):
    from vjepa_adapt.models.vjepa import apply_performance_switches

    return apply_performance_switches(model, gradient_checkpointing=cfg.model.gradient_checkpointing,
                                      compile=cfg.model.compile)


def build_random(cfg: PipelineConfig, input_transform: str = "rgb"):
    """A random-init model of the configured preset (the demo base's starting point)."""
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(cfg.run.seed)
    extra = {"patch_size": cfg.model.patch_size} if cfg.model.patch_size else {}
    model = build_model(cfg.model.preset, crop_size=cfg.data.size, frames_per_clip=cfg.data.num_frames,
                        attn_implementation=cfg.model.attn_implementation, input_transform=input_transform, **extra)
    return _perf(_with_mask_index(model, cfg), cfg)


def build_random_init(cfg: PipelineConfig, run_dir: Path):
    """The random-init baseline: the frozen encoder's architecture and input transform, fresh weights.

    On the demo world the frozen encoder is the packaged base (frame-difference input), whose config
    is read from its folder; on real clips the preset's architecture with RGB input is the Hub
    checkpoints' own, so no weights are loaded (or needed) to build it."""
    if not uses_packaged_base(cfg):
        return build_random(cfg)
    from vjepa_adapt.models.vjepa import _model_from_config

    config = load_frozen(cfg, run_dir).config
    torch.manual_seed(cfg.run.seed)
    return _perf(_model_from_config(config, cfg.model.attn_implementation), cfg)


def load_frozen(cfg: PipelineConfig, run_dir: Path):
    from vjepa_adapt.models.vjepa import load_model

    # The preset is checked against the weights' own config, unless the patch size was overridden.
    preset = None if cfg.model.patch_size else cfg.model.preset
    model, report = load_model(frozen_weights(cfg), preset=preset, crop_size=cfg.data.size,
                               frames_per_clip=cfg.data.num_frames, min_loaded_fraction=cfg.model.min_loaded_fraction,
                               attn_implementation=cfg.model.attn_implementation)
    return _perf(_with_mask_index(model, cfg), cfg)


def _with_mask_index(model, cfg: PipelineConfig):
    """``model.predictor_mask_index``, when set, overrides the token the weights record (the trainer
    reads it from ``model.config``, and the exports record it again)."""
    from vjepa_adapt.models.vjepa import predictor_mask_index

    want = cfg.model.predictor_mask_index
    if want is not None and want != predictor_mask_index(model.config):
        log.info(f"model.predictor_mask_index={want} overrides the weights' own "
                 f"{predictor_mask_index(model.config)}")
    if want is not None:
        model.config.predictor_mask_index = want
    return model
