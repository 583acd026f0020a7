"""Where each case's segmentation goes: one output file per case, never an input, never another case's output.

MONAI's SaveImage names an output after the input's file name only, so `case_00000/imaging.nii.gz` and
`case_00001/imaging.nii.gz` (the KiTS layout) both became `imaging_seg.nii.gz`, the second overwriting the first.
`CaseLayout` keeps each input's folders below the inputs' common folder (MONAI's own ``data_root_dir`` rule), and
refuses, before any work, names that still collide (`x.nii` beside `x.nii.gz`) or that equal an input file (output
folder = input folder with an empty postfix), and outputs inside an input DICOM series folder (the next read would
stack them as slices). A series folder's output is named after the whole folder name (`1.2.840.5/` ->
`1.2.840.5_seg.dcm`; MONAI would cut it at the last dot, as if it were a suffix). It is also the ``folder_layout``
that SaveImaged writes with, so the names checked here are the names written. `pending_cases` gives this process its
share of the cases (torchrun: every case on exactly one rank) and skips those whose output already exists (outputs
are written atomically, so an existing output is complete).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from monai.data import FolderLayout, partition_dataset
from scripts.errors import BundleInputError
from scripts.settings import as_bool

logger = logging.getLogger("mnet.outputs")


def case_images(case: Any, key: str = "image") -> list[str]:
    """The image file(s) of a datalist entry; the first one is what MONAI names the output after."""
    value = case.get(key) if isinstance(case, dict) else case
    return [os.fspath(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def case_inputs(case: Any) -> list[str]:
    """Every file a case reads (image channels, label), which no output may replace."""
    paths = []
    for value in (case.values() if isinstance(case, dict) else [case]):
        values = value if isinstance(value, (list, tuple)) else [value]
        paths += [os.fspath(v) for v in values if isinstance(v, (str, os.PathLike))]
    return paths


def _subject(image: str) -> str:
    """What MONAI's FolderLayout names an output after: it strips a suffix, which a series folder does not have."""
    return image + ".series" if os.path.isdir(image) else image


def _key(path: str) -> str:
    """One spelling per file: absolute, symlinks resolved (an output through a linked folder is still the input)."""
    return os.path.normcase(os.path.realpath(path))


class CaseLayout(FolderLayout):
    """MONAI FolderLayout over one list of cases: outputs keep the inputs' sub-folders below their common folder.

    ``assign(cases)`` (called by `pending_cases`, or at construction with ``cases``) fixes the names and raises
    `BundleInputError` when two cases would write one file or an output would replace an input. Until then, and
    for files not among the cases (a caller that replaced ``dataset#data``, e.g. MONAI Label), outputs are named
    flat, as MONAI's own layout names them. ``cases`` are datalist entries (``{"image": ...}`` dicts or paths).
    """

    def __init__(
        self,
        output_dir: str,
        postfix: str = "seg",
        extension: str = ".nii.gz",
        cases: Sequence[Any] | None = None,
        image_key: str = "image",
    ):
        super().__init__(output_dir, postfix=postfix, extension=extension, parent=False, makedirs=False)
        self.outputs: dict[str, str] = {}
        if cases is not None:
            self.assign(cases, image_key)

    def assign(self, cases: Sequence[Any], image_key: str = "image") -> None:
        """Name every case's output, then check the names (before any work)."""
        images = [case_images(case, image_key)[0] for case in cases]
        folders = [os.path.dirname(os.path.abspath(p)) for p in images]
        keep = FolderLayout(
            self.output_dir,
            postfix=self.postfix,
            extension=self.ext,
            parent=False,
            makedirs=False,
            data_root_dir=os.path.commonpath(folders) if folders else "",
        )
        self.outputs = {image: os.fspath(keep.filename(subject=_subject(image))) for image in images}
        self._check(cases, images)

    def filename(self, subject: Any = "subject", idx=None, **kwargs) -> str:
        known = self.outputs.get(os.fspath(subject)) if idx is None and not kwargs else None
        return known if known is not None else os.fspath(super().filename(_subject(os.fspath(subject)), idx, **kwargs))

    def output_of(self, case: Any, image_key: str = "image") -> str:
        """The file this case's segmentation is written to."""
        return self.filename(subject=case_images(case, image_key)[0])

    def _check(self, cases: Sequence[Any], images: list[str]) -> None:
        owner: dict[str, str] = {}
        for image in images:
            key = _key(self.outputs[image])
            if key in owner:
                first = owner[key]
                if _key(first) == _key(image):
                    raise BundleInputError(f"{image}: listed twice in the images to segment")
                raise BundleInputError(
                    f"{self.outputs[image]}: would hold the segmentations of both {first} and "
                    f"{image}; rename one of them or segment them in separate runs"
                )
            owner[key] = image
        inputs = {_key(p): p for case in cases for p in case_inputs(case)}
        series = [(_key(p), p) for p in inputs.values() if os.path.isdir(p)]
        for image, output in self.outputs.items():
            clash = inputs.get(_key(output))
            if clash is not None:
                raise BundleInputError(
                    f"{output}: the segmentation of {image} would overwrite the input {clash}; "
                    "choose another --output_dir or a non-empty --output_postfix"
                )
            inside = next((p for key, p in series if os.path.commonpath([key, _key(output)]) == key), None)
            if inside is not None:
                raise BundleInputError(
                    f"{output}: the segmentation of {image} would be written into the DICOM series folder "
                    f"{inside}, where the next read would take it for a slice; choose another --output_dir"
                )


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pending_cases(
    cases: Sequence[Any], layout: CaseLayout, overwrite: bool = False, image_key: str = "image"
) -> list[Any]:
    """Assign the output names of all ``cases`` to ``layout`` (checking them), then return this process's share
    (under torchrun: every case on exactly one rank, uneven shares, no padding) minus those whose output exists
    unless ``overwrite``. Split first, then skip: a rank's share does not depend on what other ranks wrote."""
    layout.assign(cases, image_key)
    rank, world = _rank_and_world()
    share = (
        list(cases)
        if world == 1
        else partition_dataset(list(cases), num_partitions=world, shuffle=False, even_divisible=False)[rank]
    )
    if as_bool(overwrite, "overwrite"):
        todo = share
    else:
        todo = [case for case in share if not os.path.isfile(layout.output_of(case, image_key))]
    where = f"rank {rank} of {world}: " if world > 1 else ""
    skipped = len(share) - len(todo)
    if skipped:
        logger.info(
            f"{where}{skipped} of {len(share)} case(s) already segmented in {layout.output_dir}, skipped "
            "(--overwrite true redoes them)"
        )
    logger.info(f"{where}{len(todo)} case(s) to segment")
    return todo
