"""Reading a torch.distributed.checkpoint (DCP) folder without running code from it.

torch's FileSystemReader unpickles ``dcp/.metadata`` with plain ``pickle.load`` and its default load
planner reads every non-tensor value (the optimizer's param-group numbers) with
``torch.load(weights_only=False)``: a crafted checkpoint folder (a shared filesystem, a downloaded run)
would run its payload on ``--resume``. Here the metadata goes through an unpickler that resolves
only the DCP metadata classes and the few torch / stdlib names they are pickled with, and byte
values go through ``torch.load(weights_only=True)``; anything else is refused with
:class:`UnsafeCheckpointError` (a pickle.UnpicklingError) before any of it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

# (module, name) pairs a DCP .metadata pickle names (torch 2.4-2.13; found by listing find_class calls).
_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED_GLOBALS = frozenset({
    (_METADATA, "Metadata"), (_METADATA, "TensorStorageMetadata"), (_METADATA, "BytesStorageMetadata"),
    (_METADATA, "ChunkStorageMetadata"), (_METADATA, "TensorProperties"), (_METADATA, "MetadataIndex"),
    (_METADATA, "StorageMeta"), (_METADATA, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", "LoadItemType"), ("torch.distributed.checkpoint.planner", "WriteItemType"),
    ("torch.serialization", "_get_layout"), ("torch._utils", "_get_layout"), ("torch", "Size"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file names something a DCP checkpoint never holds (code that would run on load)."""


class MetadataUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS` and torch dtypes (``torch.float32``, ...)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(f"{module}.{name} is not part of a checkpoint's metadata")


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose ``read_metadata`` cannot run code from the file."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = MetadataUnpickler(stream).load()
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path} does not hold checkpoint metadata ({type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner reading non-tensor values with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise UnsafeCheckpointError(f"the value of {read_item.dest_index.fqn} is not plain data (reading it "
                                        "would run code)") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # the parent's own helper

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def check_metadata(dcp_dir: Path | str) -> None:
    """Raise UnsafeCheckpointError (naming the file and what it names) unless ``dcp_dir/.metadata``
    unpickles with :class:`MetadataUnpickler` into DCP metadata."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(dcp_dir) / ".metadata"
    with open(path, "rb") as f:
        try:
            metadata = MetadataUnpickler(f).load()
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"{path}: refused, {err} (loading it would run code)") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path} does not hold checkpoint metadata ({type(metadata).__name__})")


def safe_dcp_load(state: dict[str, Any], dcp_dir: Path | str) -> None:
    """``torch.distributed.checkpoint.load(state, checkpoint_id=dcp_dir)`` (in place, resharding to
    this process group or to one process), refusing any file that would run code when read:
    UnsafeCheckpointError, not DCP's CheckpointException wrapper."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    check_metadata(dcp_dir)
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(dcp_dir)), planner=SafeLoadPlanner())
    except CheckpointException as err:
        unsafe = [exc for exc, _ in err.failures.values() if isinstance(exc, UnsafeCheckpointError)]
        if unsafe:
            raise UnsafeCheckpointError(f"{dcp_dir}: refused, {unsafe[0]}") from None
        raise
