"""Checkpoint formats: safetensors (our own reader and writer), Hugging Face model folders, and
atomic file/folder writes for checkpoints that are never left half-written.

No torch, no transformers, no pickle: every byte read is parsed and checked here, and a bad file
raises `CheckpointError` naming the file, the tensor or field, and the problem.
"""
from .atomic import atomic_directory, atomic_open, atomic_write_bytes, atomic_write_text
from .errors import CheckpointError
from .hf import load_hf_folder, save_hf_folder
from .safetensors import read_safetensors, read_safetensors_header, write_safetensors

__all__ = ["CheckpointError", "atomic_directory", "atomic_open", "atomic_write_bytes",
           "atomic_write_text", "load_hf_folder", "save_hf_folder", "read_safetensors",
           "read_safetensors_header", "write_safetensors"]
