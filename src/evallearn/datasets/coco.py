"""COCO captions (Lin et al., ECCV 2014, "Microsoft COCO: Common Objects in Context") as the
retention / image-quality prompt set, with the reference images FID compares against.

The unlearning papers use the "COCO-30k" set: 30,000 captions of the 2014 validation split, one
per image, with an evaluation seed (e.g. ``coco_30k.csv`` in ESD's / RECE's repositories). Public
homes: captions from ``https://cocodataset.org`` (``annotations/captions_val2014.json``) or the
COCO-30k CSVs in the ESD repository (``rohitgandikota/erasing``, ``data/coco_30k.csv``); images
from ``http://images.cocodataset.org/zips/val2014.zip``. ``images`` points at the folder of
reference images; a record gets ``meta['image']`` when a file for its COCO id is found there.

The toy analogue: fully specified captions of every shape x colour x style, whose reference
images are renders of the same scenes (``meta['render']``).
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetParams, PromptDataset, PromptRecord, as_int, column

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class CocoCaptions(PromptDataset):
    description = "COCO captions (e.g. COCO-30k) with an optional folder of reference images for FID."
    paper = "Lin et al., ECCV 2014"
    home = "cocodataset.org captions_val2014 / ESD's data/coco_30k.csv; images val2014.zip"

    class Params(DatasetParams):
        #: folder of reference images (COCO val2014 files), matched to captions by COCO id
        images: str | None = None

    def image_index(self) -> dict[int, Path]:
        if not self.params.images:
            return {}
        folder = Path(self.params.images).expanduser()
        if not folder.is_dir():
            from ..errors import UserError

            raise UserError(f"dataset '{self.name}': images folder not found: {folder}")
        index = {}
        for f in folder.rglob("*"):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                digits = "".join(ch for ch in f.stem.rsplit("_", 1)[-1] if ch.isdigit())
                if digits:
                    index[int(digits)] = f
        return index

    def read(self, rows):
        pc = column(rows, ("prompt", "caption", "text"), self.name)
        sc = column(rows, ("evaluation_seed", "seed"), self.name, required=False)
        ic = column(rows, ("coco_id", "image_id", "id"), self.name, required=False)
        images = self.image_index()
        out = []
        for row in rows:
            cid = as_int(row.get(ic)) if ic else None
            meta = {"coco_id": cid} if cid is not None else {}
            if cid is not None and cid in images:
                meta["image"] = str(images[cid])
            out.append(PromptRecord(str(row[pc]).strip(), as_int(row.get(sc)) if sc else None, meta=meta))
        return out

    def reference_images(self, records, ctx=None, size: int | None = None):
        """uint8 [N, H, W, 3] reference images for ``records``: the image files, or for a world's
        analogue records the images that world gives."""
        import numpy as np
        from PIL import Image

        from ..concepts.world import world_images

        made = world_images(records, ctx, size)
        if made is not None:
            return made
        paths = [r.meta["image"] for r in records if "image" in r.meta]
        if not paths:
            from ..errors import UserError

            raise UserError(f"dataset '{self.name}': no reference images; set `images` to the COCO val2014 folder")
        out = []
        for p in paths:
            img = Image.open(p).convert("RGB")
            if size:
                img = img.resize((size, size), Image.BICUBIC)
            out.append(np.asarray(img))
        return np.stack(out) if size else out
