"""A contact sheet of SynthPedes photos with their captions."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def contact_sheet(root: str | Path, out: str | Path, count: int = 32, split: str = "test", columns: int = 8) -> Path:
    """Write a PNG of ``count`` images of ``split`` with their first caption beneath each."""
    root, out = Path(root), Path(out)
    records = [r for r in json.loads((root / "reid_raw.json").read_text()) if r["split"] == split]
    # one image per identity first, so the sheet shows many people
    seen, picked = set(), []
    for r in records:
        if r["id"] not in seen:
            seen.add(r["id"])
            picked.append(r)
        if len(picked) == count:
            break
    font = ImageFont.load_default(size=11)
    cell_w, img_h, text_h = 200, 256, 150
    rows = (len(picked) + columns - 1) // columns
    sheet = Image.new("RGB", (cell_w * columns, (img_h + text_h) * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(picked):
        x, y = (i % columns) * cell_w, (i // columns) * (img_h + text_h)
        img = Image.open(root / "imgs" / r["file_path"]).convert("RGB")
        sheet.paste(img, (x + (cell_w - img.width) // 2, y))
        lines = textwrap.wrap(r["captions"][0], width=34)[:11]
        draw.multiline_text((x + 4, y + img_h + 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
