"""Traces and HTML reports of THI dialogues.

Trace: one JSON line per round (the :class:`graphs.state.RoundRecord` plus the query id and the
original query). Report: one self-contained HTML page (thumbnails embedded as data URLs, no
scripts, no outside files) with the run's settings, a legend, and every round: the candidates
checked and their verdicts, the anchor, the questions and answers ("cannot tell" shown apart
from a real "none"), the rewritten query, the notes, the top-k as thumbnails linking to the photo
files, the true person's rank where it is known, and why the dialogue went on or stopped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from tools.photos import PhotoError, read_photo

#: thumbnail height in CSS pixels (SynthPedes photos are 128 x 256: shown at 96 x 192)
THUMB_HEIGHT = 192


def trace_lines(state: dict, qid: str | int = 0) -> list[str]:
    return [json.dumps({"qid": qid, "original_query": state["query"], **r}) for r in state.get("rounds", [])]


def write_trace(path: str | Path, states: Iterable[dict], append: bool = False) -> None:
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for qid, state in enumerate(states):
            for line in trace_lines(state, qid):
                f.write(line + "\n")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _thumb(path: Path, height: int = THUMB_HEIGHT) -> str:
    """A JPEG data URL of the photo scaled to ``height`` pixels tall ('' when it cannot be read)."""
    try:
        im = read_photo(path)  # upright, 8-bit: as indexed
    except PhotoError:
        return ""
    im.thumbnail((4 * height, height))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_url(path: Path) -> str:
    """A file:// URL of ``path`` (percent-encoded: spaces, quotes, non-ASCII are safe in an href)."""
    try:
        return Path(path).resolve().as_uri()
    except ValueError:
        return ""


#: border colour classes of a candidate: the anchor, then its latest verification
MARKS = {"anchor": "the anchor (the candidate THI verified and asked about)",
         "yes": "verified: fits the description",
         "no": "verified: does not fit",
         "unsure": "abstained or skipped (no verdict; the candidate is not moved)",
         "": "not checked"}


def _verdict(ins: Mapping) -> str:
    if ins["match"] is None:
        return "abstained" if str(ins.get("reason", "")).startswith("abstained") else "skipped"
    return "yes" if ins["match"] else "no"


def _candidates(cands: Sequence[Mapping], image_path: Callable[[str], Path], marks: Mapping[str, str],
                anchor: str | None, target: Callable[[str], bool] | None = None) -> str:
    cells = []
    for n, c in enumerate(cands, 1):
        cls = "anchor" if c["id"] == anchor else marks.get(c["id"], "")
        path = image_path(c["id"])
        src, url = _thumb(path), _file_url(path)
        img = f'<img src="{src}" alt="{_esc(c["id"])}">' if src else f'<span class="noimg">{_esc(c["id"])}</span>'
        link = f'<a href="{_esc(url)}" title="{_esc(path)}">{img}</a>' if url else img
        score = f'{c["score"]:.3f}' + ('<sup class="over">&gt;1</sup>' if c["score"] > 1 else "")
        who = ' <b class="target">true person</b>' if target and target(c["id"]) else ""
        cells.append(f'<figure class="{cls}">{link}<figcaption>#{n} {score}{who}<br>'
                     f'<small>{_esc(c["id"])}</small></figcaption></figure>')
    return '<div class="row">' + "".join(cells) + "</div>"


def _answer(a: Mapping) -> str:
    value = a.get("value")
    if value is None:  # the answerer could not tell: not the same as a real "none"
        shown = '<span class="cannot-tell">cannot tell</span>'
    else:
        shown = f'<b class="answer">{_esc(value)}</b>'
    return f'<li>{_esc(a["question"])} {shown} <small>({_esc(a["source"])})</small></li>'


def _legend(above_one: str | None) -> str:
    items = "".join(f'<li><span class="swatch {cls or "plain"}"></span>{_esc(text)}</li>' for cls, text in MARKS.items())
    extra = [
        '<li><span class="cannot-tell">cannot tell</span>: the answerer could not tell from the photo '
        '(a real answer &quot;none&quot; is shown in bold like any other value)</li>',
        '<li><b class="target">true person</b>: a photo of the person the query describes, and the rank of '
        'that person&#x27;s best-ranked photo: known only because the gallery is annotated</li>',
        "<li>Each thumbnail links to its photo file.</li>"]
    if above_one:
        extra.append(f'<li><sup class="over">&gt;1</sup> a score above 1: {_esc(above_one)}</li>')
    return f'<section class="legend"><h2>Legend</h2><ul>{items}{"".join(extra)}</ul></section>'


def write_report(path: str | Path, state: dict, image_path: Callable[[str], Path], k: int = 10, title: str = "THI",
                 settings: Mapping[str, object] | None = None, target_ranks: Sequence[int | None] | None = None,
                 above_one: str | None = None, target: Callable[[str], bool] | None = None) -> None:
    """A self-contained HTML page of one THI dialogue (every value HTML-escaped).

    Args:
        state: the final THI state (``query``, ``original_ranking``, ``rounds``, ``stopped_because``).
        image_path: the photo file of an image id.
        k: candidates shown per round.
        settings: the run's settings, label -> value (policy, model, MLLM backend, k, rounds, xi,
            lambda...), shown in a table.
        target_ranks: the true person's rank before THI and after each round (length
            ``len(rounds) + 1``) when known; default: each round's ``target_rank``.
        above_one: why a fused score can exceed 1 (shown in the legend when a shown score does).
        target: whether an image id shows the true person (marks it), when known.
    """
    rounds = state.get("rounds", [])
    if target_ranks is None and any(r.get("target_rank") is not None for r in rounds):
        target_ranks = [None] + [r.get("target_rank") for r in rounds]

    def rank_note(n: int) -> str:
        if target_ranks is None or n >= len(target_ranks) or target_ranks[n] is None:
            return ""
        was = target_ranks[n - 1] if n > 0 else None
        moved = f" (was {was})" if was is not None and was != target_ranks[n] else ""
        return f'<p class="rank">True person: rank <b>{target_ranks[n]}</b>{moved}</p>'

    parts = [f"<h1>{_esc(title)}</h1>", f"<p><b>Query:</b> {_esc(state['query'])}</p>"]
    if settings:
        rows = "".join(f"<tr><th>{_esc(k_)}</th><td>{_esc(v)}</td></tr>" for k_, v in settings.items())
        parts.append(f'<section class="settings"><h2>Run settings</h2><table>{rows}</table></section>')
    over = any(c["score"] > 1 for r in rounds for c in r["topk"][:k])
    parts.append(_legend(above_one if over else None))
    if state.get("truncated"):
        parts.append(f"<p class=warn>Not seen by the text encoder (over its token budget): "
                     f"{_esc(state['truncated'])}</p>")
    parts.append('<section class="round"><h2>Round 0: retrieval</h2>' + rank_note(0)
                 + _candidates(state["original_ranking"][:k], image_path, {}, None, target) + "</section>")
    marks: dict[str, str] = {}
    for n, r in enumerate(rounds, 1):
        body = [f"<h2>Round {_esc(r['round'])}</h2>"]
        if r["inspected"]:
            rows = "".join(f"<li>{_esc(i['id'])} (rank {_esc(i['rank'])}): <b class=\"verdict\">{_verdict(i)}</b> "
                           f"({i['confidence']:.2f}) {_esc(i['reason'])}</li>" for i in r["inspected"])
            body.append(f"<p>Checked:</p><ul>{rows}</ul>")
        for i in r["inspected"]:  # the border shows each candidate's latest verification
            marks[i["id"]] = "unsure" if i["match"] is None else "yes" if i["match"] else "no"
        body.append(f"<p><b>Anchor:</b> {_esc(r['anchor'] or 'none yet')}</p>")
        if r["answers"]:
            body.append(f"<ul class=answers>{''.join(_answer(a) for a in r['answers'])}</ul>")
        if r.get("rewritten_query"):
            body.append(f"<p><b>Rewritten query:</b> {_esc(r['rewritten_query'])}</p>")
        for note in r.get("notes", []):
            body.append(f"<p class=warn>Note: {_esc(note)}</p>")
        body.append(rank_note(n))
        body.append(_candidates(r["topk"][:k], image_path, marks, r["anchor"], target))
        body.append(f"<p><small>{_esc(r['mllm_calls'])} MLLM calls, {r['ms']:.1f} ms</small></p>")
        if n == len(rounds) and state.get("stopped_because"):
            body.append(f'<p class="stop"><b>Stopped:</b> {_esc(state["stopped_because"])}</p>')
        else:
            body.append('<p class="stop">Went on to the next round.</p>')
        parts.append('<section class="round">' + "".join(body) + "</section>")
    if not rounds and state.get("stopped_because"):
        parts.append(f'<p class="stop"><b>Stopped:</b> {_esc(state["stopped_because"])}</p>')
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}.row{display:flex;flex-wrap:wrap;gap:8px}"
             f"figure{{margin:0;padding:3px;border:4px solid #ddd;text-align:center;font-size:12px}}"
             f"img{{height:{THUMB_HEIGHT}px;display:block;margin:auto}}"
             ".noimg{display:block;height:%dpx;width:96px;background:#eee}" % THUMB_HEIGHT
             + "figure.yes{border-color:#2a2}figure.no{border-color:#c22}figure.anchor{border-color:#26f}"
             "figure.unsure{border-color:#e90;border-style:dashed}"
             ".swatch{display:inline-block;width:1.2em;height:1em;border:4px solid #ddd;margin-right:.5em;"
             "vertical-align:middle}.swatch.yes{border-color:#2a2}.swatch.no{border-color:#c22}"
             ".swatch.anchor{border-color:#26f}.swatch.unsure{border-color:#e90;border-style:dashed}"
             ".cannot-tell{color:#777;font-style:italic;border:1px dotted #999;padding:0 .3em}"
             ".target{color:#a0a}.over{color:#a60}.warn{color:#a60}.rank{font-size:1.1em}"
             ".settings table{border-collapse:collapse}.settings th,.settings td{text-align:left;padding:2px 10px;"
             "border-bottom:1px solid #eee}.legend ul{list-style:none;padding-left:0}.round{margin-top:1.5em}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{_esc(title)}</title>"
                          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8",
                          errors="replace")  # a query from undecodable argv bytes holds lone surrogates
