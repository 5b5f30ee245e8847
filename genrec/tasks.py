"""SFT tasks: prompt/response pairs that teach a causal LM the item SIDs of a run, built with `datasets`.

Six tasks, each with its prompt template in ``genrec/prompts/<task>.txt``:

| task         | prompt                                  | response            |
|--------------|-----------------------------------------|---------------------|
| `seq_sid`    | the user's history as SIDs              | next item's SID     |
| `seq_title`  | the user's history as titles            | next item's SID     |
| `title2sid`  | an item's title                         | its SID             |
| `sid2title`  | an item's SID                           | its title           |
| `token2desc` | one SID token (TS-Align)                | its cluster's description |
| `desc2token` | a token's description (TS-Align)        | the SID token       |
| `seq_knn`    | a one-item SID history                  | SID of a content neighbour |

`seq_sid` rows come from ``splits/train.jsonl``; `seq_title` uses the same rows; the item tasks use every
item of ``sids.json``; the TS-Align tasks every token of ``token_semantics.json``. `seq_knn` carries the content
signal into the next-item format itself: for every item, its nearest items by text embedding (``item_emb.npy``
of the embed stage) as pseudo next items, with the same prompt as `seq_sid` (so it needs no template). Each example is tokenized
once by `encode_example`: prompt tokens (the model's chat template when it has one) then response tokens and
EOS, with ``labels`` = -100 on the prompt, so the loss covers the response only. Inference builds its prompt
tokens with the same `encode_prompt`, and the next-item prompt with the same `sid_history_prompt`.

Example:
    >>> sid_history_prompt(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"])
    'User history: <a_1><b_2><c_3>, <a_4><b_5><c_6>. Next item:'
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from genrec.data import read_items, read_split
from genrec.sid import load_sids, sid_string

logger = logging.getLogger(__name__)

TASKS = ("seq_sid", "seq_title", "title2sid", "sid2title", "token2desc", "desc2token", "seq_knn")
# Tasks that teach what SIDs mean rather than what comes next; a curriculum can run them first.
ALIGN_TASKS = ("title2sid", "sid2title", "token2desc", "desc2token")
HISTORY_SEPARATOR = ", "


@functools.cache
def template(task: str) -> str:
    """The prompt template of a task (``genrec/prompts/<task>.txt``), a `str.format` pattern."""
    if task not in TASKS or task == "seq_knn":
        raise ValueError(f"no template for task {task!r}; templated tasks are {', '.join(TASKS[:-1])}")
    return resources.files("genrec").joinpath("prompts", f"{task}.txt").read_text(encoding="utf-8").strip()


def _words(text: str, max_words: int) -> str:
    return " ".join(str(text).split()[:max_words])


def sid_history_prompt(history_sids: Sequence[str]) -> str:
    """The next-item prompt over a history of SID strings (oldest first); training and evaluation both use it."""
    return template("seq_sid").format(history=HISTORY_SEPARATOR.join(history_sids))


def title_history_prompt(history_titles: Sequence[str]) -> str:
    return template("seq_title").format(history="; ".join(history_titles))


@dataclass
class Catalog:
    """What the tasks read from a run directory: titles, SID strings and (optionally) token semantics."""

    titles: dict[str, str]  # item_id -> title
    sids: dict[str, str]  # item_id -> SID string
    semantics: dict[str, dict]  # SID token -> {"description": ..., ...}; empty without token_semantics.json
    neighbours: dict[str, list[str]] = field(default_factory=dict)  # item_id -> nearest items, closest first

    @classmethod
    def load(cls, run_dir: str | Path, knn_neighbours: int = 0) -> Catalog:
        run_dir = Path(run_dir)
        codes = load_sids(run_dir / "sids.json")
        titles = {it["item_id"]: it["title"] for it in read_items(run_dir)}
        missing = sorted(set(codes) - set(titles))
        if missing:
            raise ValueError(f"{run_dir}/sids.json has items {missing[:5]} that items.jsonl lacks; re-run quantize")
        semantics = {}
        if (run_dir / "token_semantics.json").exists():
            from genrec.describe import load_token_semantics

            semantics = load_token_semantics(run_dir)
        neighbours = content_neighbours(run_dir, list(codes), knn_neighbours) if knn_neighbours else {}
        return cls(titles, {iid: sid_string(c) for iid, c in codes.items()}, semantics, neighbours)


@dataclass
class TaskOptions:
    """Prompt-length knobs shared by every task (the SFT arguments carry them)."""

    max_history: int = 10
    max_title_words: int = 20
    max_description_words: int = 40
    knn_neighbours: int = 5


def _history_examples(task: str, rows: list[dict], catalog: Catalog, opts: TaskOptions) -> list[dict]:
    out = []
    for row in rows:
        history = [iid for iid in row["history"] if iid in catalog.sids][-opts.max_history:]
        if not history or row["target"] not in catalog.sids:
            continue
        if task == "seq_sid":
            prompt = sid_history_prompt([catalog.sids[i] for i in history])
        else:
            prompt = title_history_prompt([_words(catalog.titles[i], opts.max_title_words) for i in history])
        out.append({"prompt": prompt, "completion": catalog.sids[row["target"]]})
    return out


def build_task_examples(task: str, catalog: Catalog, rows: list[dict], opts: TaskOptions) -> list[dict]:
    """All {"prompt", "completion"} pairs of one task (its pool); `rows` are the train rows."""
    if task in ("seq_sid", "seq_title"):
        return _history_examples(task, rows, catalog, opts)
    if task in ("title2sid", "sid2title"):
        pairs = [(_words(catalog.titles[i], opts.max_title_words), sid) for i, sid in catalog.sids.items()]
        if task == "title2sid":
            return [{"prompt": template(task).format(title=t), "completion": sid} for t, sid in pairs]
        return [{"prompt": template(task).format(sid=sid), "completion": t} for t, sid in pairs]
    if task in ("token2desc", "desc2token"):
        if not catalog.semantics:
            raise ValueError(f"task {task} needs token_semantics.json in the run directory; run the describe stage "
                             f"or set its ratio to 0 in task_mix")
        pairs = [(tok, _words(s["description"], opts.max_description_words)) for tok, s in catalog.semantics.items()]
        if task == "token2desc":
            return [{"prompt": template(task).format(token=tok), "completion": d} for tok, d in pairs]
        return [{"prompt": template(task).format(description=d), "completion": tok} for tok, d in pairs]
    if task == "seq_knn":
        if not catalog.neighbours:
            raise ValueError("task seq_knn needs item neighbours: load the catalog with Catalog.load(run_dir, "
                             "knn_neighbours=k) after the embed stage, or set its ratio to 0 in task_mix")
        return [{"prompt": sid_history_prompt([catalog.sids[iid]]), "completion": catalog.sids[nb]}
                for iid, nbs in catalog.neighbours.items() for nb in nbs[: opts.knn_neighbours]]
    raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def content_neighbours(run_dir: str | Path, item_ids: Sequence[str], k: int) -> dict[str, list[str]]:
    """Each item's `k` nearest other items by cosine similarity of the embed stage's item embeddings."""
    import numpy as np
    import torch

    from genrec.encoders import load_item_embeddings

    ids, emb = load_item_embeddings(Path(run_dir))
    row = {iid: i for i, iid in enumerate(ids)}
    missing = [iid for iid in item_ids if iid not in row]
    if missing:
        raise ValueError(f"{run_dir}/item_emb.npy lacks items {missing[:5]}; re-run the embed stage")
    vecs = torch.nn.functional.normalize(torch.from_numpy(np.asarray(emb[[row[i] for i in item_ids]])), dim=1)
    out = {}
    for start in range(0, len(item_ids), 1024):
        sims = vecs[start:start + 1024] @ vecs.T
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2.0  # not itself
        top = sims.topk(min(k, len(item_ids) - 1), dim=1).indices.tolist()
        out.update({item_ids[start + r]: [item_ids[j] for j in js] for r, js in enumerate(top)})
    return out


# ----------------------------------------------------------------------------- tokenization


def format_prompt(tokenizer, text: str) -> str:
    """The prompt as the model reads it: wrapped in the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt token ids, exactly as training saw them (no [CLS]/[SEP]-style extras; chat template if any)."""
    return tokenizer(format_prompt(tokenizer, text), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: str, completion: str) -> dict:
    """input_ids = prompt + completion + EOS; labels = -100 on the prompt, the token ids on the rest."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (e.g. tokenizer.eos_token = '[SEP]') before SFT")
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}


# ----------------------------------------------------------------------------- task mix and schedule


def check_task_mix(mix: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ValueError(f"task_mix has unknown task(s) {unknown}; tasks are {', '.join(TASKS)}")
    bad = {t: r for t, r in mix.items() if not isinstance(r, (int, float)) or r < 0}
    if bad:
        raise ValueError(f"task_mix ratios must be numbers >= 0, got {bad}")
    if not any(r > 0 for r in mix.values()):
        raise ValueError(f"task_mix {mix} selects no task; give at least one task a ratio > 0")
    return {t: float(r) for t, r in mix.items()}


def _draw(rng: random.Random, indices: list[int], ratio: float) -> list[int]:
    """`ratio` passes over a pool: whole copies, then a random part for the fraction."""
    whole, frac = divmod(ratio, 1.0)
    return indices * int(whole) + rng.sample(indices, round(frac * len(indices)))


def schedule(pools: dict[str, list[int]], mix: dict[str, float], epochs: float, align_epochs: float = 0.0,
             seed: int = 0) -> list[int]:
    """Example indices in training order: `align_epochs` passes over the alignment tasks, then `epochs` passes
    over the whole mix. One pass draws ``ratio x pool size`` examples of each task and shuffles them; each pass
    draws anew, and a fractional last pass is cut short."""
    rng = random.Random(seed)
    order: list[int] = []
    for phase_epochs, tasks in ((align_epochs, ALIGN_TASKS), (epochs, TASKS)):
        for start in range(math.ceil(phase_epochs)):
            part = [i for t in tasks if mix.get(t, 0) > 0 for i in _draw(rng, pools[t], mix[t])]
            rng.shuffle(part)
            order += part[: round(len(part) * min(1.0, phase_epochs - start))]
    return order


def group_by_length(order: list[int], lengths: Sequence[int], batch_size: int, seed: int = 0,
                    window: int = 64) -> list[int]:
    """Reorder `order` so each batch holds examples of similar length (less padding): within consecutive windows
    of `window` batches, sort by length, cut into batches and shuffle the batches. Curriculum phases move at most
    one window."""
    rng = random.Random(seed)
    out: list[int] = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        out += [i for b in batches for i in b]
    return out


def build_sft_dataset(run_dir: str | Path, tokenizer, mix: dict[str, float], opts: TaskOptions, epochs: float,
                      align_epochs: float = 0.0, seed: int = 0, batch_size: int = 1):
    """The training schedule as a tokenized `datasets.Dataset` (input_ids, labels, task), in training order,
    batches of `batch_size` grouped by length.

    Every example is tokenized once; the schedule is a selection (with repeats) of those rows.
    """
    from datasets import Dataset

    catalog = Catalog.load(run_dir, opts.knn_neighbours if mix.get("seq_knn", 0) > 0 else 0)
    rows = read_split(Path(run_dir), "train")
    examples, pools = [], {}
    for task in TASKS:
        if mix.get(task, 0) <= 0:
            continue
        task_examples = build_task_examples(task, catalog, rows, opts)
        pools[task] = list(range(len(examples), len(examples) + len(task_examples)))
        examples += [{**ex, "task": task} for ex in task_examples]
        logger.info("task %-10s %6d examples x %.2f per epoch", task, len(task_examples), mix[task])
    table = Dataset.from_list(examples).map(
        lambda ex: encode_example(tokenizer, ex["prompt"], ex["completion"]),
        remove_columns=["prompt", "completion"], desc="tokenizing SFT tasks",
    )
    order = schedule(pools, mix, epochs, align_epochs, seed)
    if not order:
        raise ValueError(f"the task mix {mix} with epochs={epochs} yields no training example")
    if batch_size > 1:
        order = group_by_length(order, [len(ids) for ids in table["input_ids"]], batch_size, seed)
    return table.select(order)
