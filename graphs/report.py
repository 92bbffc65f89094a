"""Traces and HTML reports of THI dialogues.

Trace: one JSON line per round (the :class:`graphs.state.RoundRecord` plus the query id and the
original query). Report: a self-contained HTML page showing every round with thumbnails of the
top-k candidates, the anchor, verification marks, the questions and answers, and the rewritten query.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Callable, Iterable

from tools.photos import PhotoError, read_photo


def trace_lines(state: dict, qid: str | int = 0) -> list[str]:
    return [json.dumps({"qid": qid, "original_query": state["query"], **r}) for r in state.get("rounds", [])]


def write_trace(path: str | Path, states: Iterable[dict], append: bool = False) -> None:
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for qid, state in enumerate(states):
            for line in trace_lines(state, qid):
                f.write(line + "\n")


def _thumb(path: Path, height: int = 96) -> str:
    try:
        im = read_photo(path)  # upright, 8-bit: as indexed
    except PhotoError:
        return ""
    im.thumbnail((height, height))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _candidates(cands: list[dict], image_path: Callable[[str], Path], marks: dict[str, str], anchor: str | None) -> str:
    cells = []
    for n, c in enumerate(cands, 1):
        cls = "anchor" if c["id"] == anchor else marks.get(c["id"], "")
        src = _thumb(image_path(c["id"]))
        cells.append(f'<figure class="{cls}"><img src="{src}" alt="{html.escape(c["id"])}">'
                     f'<figcaption>#{n} {c["score"]:.3f}<br><small>{html.escape(c["id"])}</small></figcaption></figure>')
    return '<div class="row">' + "".join(cells) + "</div>"


def write_report(path: str | Path, state: dict, image_path: Callable[[str], Path], k: int = 10, title: str = "THI") -> None:
    """A self-contained HTML page of one THI dialogue."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p><b>Query:</b> {html.escape(state['query'])}</p>"]
    if state.get("truncated"):
        parts.append(f"<p class=warn>Not seen by the text encoder (over its token budget): "
                     f"{html.escape(state['truncated'])}</p>")
    parts.append("<h2>Round 0: retrieval</h2>" + _candidates(state["original_ranking"][:k], image_path, {}, None))
    for r in state.get("rounds", []):
        marks = {i["id"]: ("yes" if i["match"] else "no") for i in r["inspected"] if i["match"] is not None}
        parts.append(f"<h2>Round {r['round']}</h2>")
        if r["inspected"]:
            rows = "".join(f"<li>{html.escape(i['id'])} (rank {i['rank']}): "
                           f"<b>{'yes' if i['match'] else 'no' if i['match'] is not None else 'skipped'}</b> "
                           f"({i['confidence']:.2f}) {html.escape(i['reason'])}</li>" for i in r["inspected"])
            parts.append(f"<p>Verified:</p><ul>{rows}</ul>")
        parts.append(f"<p><b>Anchor:</b> {html.escape(str(r['anchor']))}</p>")
        if r["answers"]:
            rows = "".join(f"<li>{html.escape(a['question'])} <b>{html.escape(str(a['value']))}</b> "
                           f"<small>({html.escape(a['source'])})</small></li>" for a in r["answers"])
            parts.append(f"<ul>{rows}</ul>")
        if r.get("rewritten_query"):
            parts.append(f"<p><b>Rewritten query:</b> {html.escape(r['rewritten_query'])}</p>")
        for note in r.get("notes", []):
            parts.append(f"<p class=warn>{html.escape(note)}</p>")
        parts.append(_candidates(r["topk"][:k], image_path, marks, r["anchor"]))
        parts.append(f"<p><small>{r['mllm_calls']} MLLM calls, {r['ms']:.1f} ms"
                     + (f", target rank {r['target_rank']}" if r.get("target_rank") else "") + "</small></p>")
    parts.append(f"<p><b>Stopped:</b> {html.escape(state.get('stopped_because', ''))}</p>")
    style = ("body{font-family:sans-serif;margin:2em}.row{display:flex;flex-wrap:wrap;gap:6px}"
             "figure{margin:0;padding:3px;border:3px solid #ddd;text-align:center;font-size:11px}"
             "figure.yes{border-color:#3a3}figure.no{border-color:#c33}figure.anchor{border-color:#36f}"
             "img{height:96px}.warn{color:#a60}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8",
                          errors="replace")  # a query from undecodable argv bytes holds lone surrogates
