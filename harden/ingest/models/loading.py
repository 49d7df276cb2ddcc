"""Load a third-party model without running foreign code: safetensors, torch.load(weights_only=True), or the
weights of a TorchScript archive / torch.export program (never run: the named architecture is rebuilt)."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from harden.core.artifacts import InputContract, ModelArtifact
from harden.core.errors import ModelLoadError
from harden.ingest.models.onnx_convert import convert_onnx
from harden.ingest.models.onnx_import import load_onnx_weights
from harden.ingest.models.registry import create_model
from harden.prune.surgery import find_classifier

ONNX_GRAPH = "onnx-graph"  # the architecture recorded for a model converted from its ONNX graph
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "model.pt2", "model.torchscript",
                "model.onnx")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MAX_HEADER = 64 << 20  # a safetensors header (JSON) larger than this is refused before it is read
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def check_safetensors(path: Path) -> None:
    """Validate a safetensors header against the file before any tensor is allocated: header size, JSON, dtypes,
    shapes and byte ranges that stay inside the file and match their shapes."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path}: too short to be a safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise ModelLoadError(f"{path}: safetensors header claims {n} bytes (file: {size}, limit {MAX_HEADER}); "
                                 "the file is malformed or hostile, refused before reading it")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: safetensors header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (dtype in _ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape)
                  and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data)
            numel = 1
            for d in shape:
                numel *= d
            ok = ok and end - begin == numel * _ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelLoadError(f"{path}: tensor {str(name)[:80]!r} has an invalid dtype, shape or byte range in the "
                                 "safetensors header; refused before allocation")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a weights-only torch checkpoint; never an arbitrary pickle."""
    if path.suffix == ".safetensors":

        check_safetensors(path)

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None
    if path.suffix in (".pt2", ".torchscript", ".ts") or (path.suffix in (".pt", ".pth") and _is_torchscript(path)):
        return _program_weights(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            with warnings.catch_warnings():  # torch's own pickle warnings are not the user's to act on here
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for bad zips
            # torch's message suggests weights_only=False, i.e. running the file's code: never repeat that advice
            what = ("it holds objects other than tensors, which could run code when unpickled"
                    if isinstance(exc, pickle.UnpicklingError) else "it is not a readable torch checkpoint")
            raise ModelLoadError(
                f"{path}: refused to load: {what}. harden only reads tensors from a checkpoint and never runs code "
                "from a model file. On a machine where you trust the file, save its weights alone: "
                "torch.save(model.state_dict(), 'weights.pt'), or better "
                "safetensors.torch.save_file(model.state_dict(), "
                "'model.safetensors'), and point model.path at that."
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelLoadError(f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}")
        return obj
    raise ModelLoadError(f"{path}: unsupported weights format {path.suffix!r}; use .safetensors, .pt/.pth (weights "
                         "only), .pt2 (torch.export) or .torchscript")


def _is_torchscript(path: Path) -> bool:

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _program_weights(path: Path) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a TorchScript archive or a torch.export program. The program itself is never run:
    harden rebuilds the architecture named in config.json / the YAML and loads these tensors into it."""

    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch.export raises many types for foreign or corrupt archives
            raise ModelLoadError(f"{path}: not a readable torch.export program ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        state = dict(program.state_dict)
        state.update({k: v for k, v in getattr(program, "constants", {}).items() if isinstance(v, torch.Tensor)})
        return {k: v.detach().clone() for k, v in state.items()}
    try:
        with zipfile.ZipFile(path) as z:
            hooks = [n for n in z.namelist() if "/code/" in n and b"__setstate__" in z.read(n)]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: not a TorchScript archive ({exc})") from None
    if hooks:
        raise ModelLoadError(f"{path}: refused: the TorchScript archive defines __setstate__ ({hooks[0]}), code that "
                             "would run while loading it. Save the plain weights instead: "
                             "torch.save(model.state_dict(), 'weights.pt') or safetensors")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; vendors still ship it
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for corrupt or version-mismatched archives
        raise ModelLoadError(f"{path}: not a readable TorchScript archive ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def rename_keys(state: dict[str, torch.Tensor], rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """Tensor names with a prefix of ``rename`` replaced (the longest matching prefix wins)."""
    if not rename:
        return state
    prefixes = sorted(rename, key=len, reverse=True)

    def new(key: str) -> str:
        hit = next((p for p in prefixes if key.startswith(p)), None)
        return key if hit is None else rename[hit] + key[len(hit):]

    return {new(k): v for k, v in state.items()}


def rename_proposal(missing: list[str], unexpected: list[str], own: dict[str, torch.Tensor],
                    state: dict[str, torch.Tensor]) -> dict[str, str] | None:
    """The prefix mapping that turns the file's names into the architecture's, when every missing key has exactly one
    unexpected key of the same shape and last name part (a classifier called `linear` where harden expects `fc`)."""
    if not missing or len(missing) != len(unexpected):
        return None
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for m in missing:
        fits = [u for u in unexpected if tuple(state[u].shape) == tuple(own[m].shape)
                and u.rsplit(".", 1)[-1] == m.rsplit(".", 1)[-1]]
        if len(fits) != 1 or fits[0] in used:
            return None
        u = fits[0]
        used.add(u)
        mp, up = m.split("."), u.split(".")
        common = 0  # shared trailing name parts
        while common < min(len(mp), len(up)) - 1 and mp[-1 - common] == up[-1 - common]:
            common += 1
        src, dst = ".".join(up[:len(up) - common]) + ".", ".".join(mp[:len(mp) - common]) + "."
        if mapping.get(src, dst) != dst:
            return None
        mapping[src] = dst
    return mapping if rename_keys({u: state[u] for u in unexpected}, mapping).keys() == set(missing) else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path, arch: str) -> None:
    """Strictly load a state_dict, listing every missing/unexpected key and shape mismatch on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{title} ({len(items)}): {shown}")
        proposal = rename_proposal(missing, unexpected, own, state)
        hint = (f". Every missing key has exactly one unexpected key of the same shape: the names differ only by a "
                f"prefix. Map them with `model: {{rename: {proposal}}}` in the pipeline YAML (or --set "
                f"'model.rename={proposal}')" if proposal else ". Check model.architecture and model.model_args "
                "(e.g. width), or map tensor-name prefixes with model.rename")
        raise ModelLoadError(f"{source} does not fit architecture {arch!r}: " + "; ".join(parts) + hint + ".")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"{source}: weights contain NaN or Inf in {', '.join(bad[:5])}")
    model.load_state_dict(state, strict=True)


def _contract_from_config(cfg: dict[str, Any], where: Path) -> InputContract:
    try:
        pc = cfg["pretrained_cfg"]
        num_classes = int(cfg["num_classes"])
        labels = cfg.get("label_names") or [str(i) for i in range(num_classes)]
        if len(labels) != num_classes:
            raise ModelLoadError(f"{where}: {len(labels)} label_names but num_classes is {num_classes}")
        return InputContract(
            input_size=tuple(int(v) for v in pc["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in pc["mean"]),
            std=tuple(float(v) for v in pc["std"]),
            labels=tuple(str(v) for v in labels),
            pixel_scale=float(pc.get("pixel_scale", 255)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{where}: config.json lacks or mistypes {exc}; it needs num_classes and pretrained_cfg "
            "with input_size, mean and std (timm hub layout)"
        ) from None


def _check_outputs(model: nn.Module, contract: InputContract, source: Path) -> None:
    with torch.no_grad():
        out = model(torch.zeros(2, *contract.input_size))
    if out.ndim != 2 or out.shape[1] != contract.num_classes:
        raise ModelLoadError(f"{source}: the graph outputs shape {tuple(out.shape)}, but the input contract has "
                             f"{contract.num_classes} labels; harden needs logits of shape (batch, classes)")


def load_model(
    path: Path,
    architecture: str | None = None,
    model_args: dict[str, Any] | None = None,
    num_classes: int | None = None,
    contract: InputContract | None = None,
    trust_code: bool = False,
    rename: dict[str, str] | None = None,
) -> ModelArtifact:
    """Ingest a model folder (timm hub layout) or an architecture name plus a weights file; an ONNX file with no
    architecture named is converted from its graph.

    Raises:
        ModelLoadError: anything about the model that the user must fix.
    """
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(f"{path}: a model folder needs config.json (timm hub layout) beside its weights")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{cfg_path}: not valid JSON ({exc})") from None
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise ModelLoadError(f"{path}: no weights file; expected one of {', '.join(WEIGHT_FILES)}")
        architecture = architecture or cfg.get("architecture")
        model_args = {**cfg.get("model_args", {}), **(model_args or {})}
        contract = contract or _contract_from_config(cfg, cfg_path)
    else:
        weights = path
        beside = path.parent / "config.json"  # a weights file inside a model folder: that folder's config
        if (architecture is None or contract is None) and beside.is_file():
            try:
                cfg = json.loads(beside.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"{beside}: not valid JSON ({exc})") from None
            architecture = architecture or cfg.get("architecture")
            model_args = {**cfg.get("model_args", {}), **(model_args or {})}
            contract = contract or _contract_from_config(cfg, beside)
        if contract is None or (architecture is None and weights.suffix != ".onnx"):
            raise ModelLoadError(
                f"{path} is a bare weights file: set model.input (size, mean, std, labels) and, unless it is an "
                "ONNX file, model.architecture in the pipeline YAML, or point model.path at a folder with config.json"
            )
    n = num_classes or contract.num_classes
    if n != contract.num_classes:
        raise ModelLoadError(f"model.num_classes is {n} but the input contract has {contract.num_classes} labels")
    if weights.suffix == ".onnx" and not architecture:  # a graph no architecture is named for: convert the graph
        model, architecture, model_args = convert_onnx(weights, contract.input_size), ONNX_GRAPH, {}
        _check_outputs(model, contract, weights)
    else:
        if not architecture:
            raise ModelLoadError(f"{path}: no architecture given (config.json 'architecture' or model.architecture)")
        model = create_model(architecture, n, model_args, trust_code, path if path.is_dir() else path.parent)
        if weights.suffix == ".onnx":
            load_onnx_weights(model, weights, contract.input_size)
        else:
            load_weights(model, rename_keys(read_state_dict(weights), rename or {}), weights, architecture)
    model.eval()
    return ModelArtifact(
        model=model,
        architecture=architecture,
        model_args=dict(model_args or {}),
        contract=contract,
        source_path=weights,
        source_sha256=sha256_file(weights),
        classifier=find_classifier(model),
    )
