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
| `seq_near`   | the user's history as SIDs              | SID of a content neighbour of the next item |

The tasks read data, not files: a `Catalog` (titles, SID strings, token semantics, content neighbours) and the
train rows, which the SFT stage runner reads from the run directory. `seq_sid` and `seq_title` use the train rows;
the item tasks every item with a SID; the TS-Align tasks every described SID token. `seq_knn` carries the content
signal into the next-item format itself: for every item, its nearest items by text embedding as pseudo next items,
with the same prompt as `seq_sid` (so it needs no template). `seq_near` puts content neighbours where the user's
own context is: a train row's history with one of the target's nearest items as the answer, so items that are
rarely or never a target (the tail, new items) are learnt as plausible next items after the histories that lead to
their look-alikes. Each example is tokenized once by `encode_example`:
prompt tokens (the model's chat template when it has one) then response tokens and EOS, with ``labels`` = -100 on
the prompt, so the loss covers the response only.

`next_item_prompt` is the one place a history of item ids becomes a prompt (cut to the latest ``max_history``
items): the seq_sid task, in-training model selection, `genrec evaluate`, GRPO and the server all call it, and
`encode_prompt` is the one place prompt text becomes token ids.

Example:
    >>> next_item_prompt(["7", "9"], {"7": "<a_1><b_2><c_3>", "9": "<a_4><b_5><c_6>"})
    'User history: <a_1><b_2><c_3>, <a_4><b_5><c_6>. Next item:'
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

logger = logging.getLogger(__name__)

TASKS = ("seq_sid", "seq_title", "title2sid", "sid2title", "token2desc", "desc2token", "sid2interest",
         "interest2sid", "seq_knn", "seq_near")
# Tasks that teach what SIDs mean rather than what comes next; a curriculum can run them first.
ALIGN_TASKS = ("title2sid", "sid2title", "token2desc", "desc2token", "sid2interest", "interest2sid")
# tasks a task mix leaves out unless it names them: content neighbours, and the interest tasks until they are measured
OFF_BY_DEFAULT = ("seq_knn", "seq_near", "sid2interest", "interest2sid")
# tasks that reuse seq_sid's prompt
UNTEMPLATED = ("seq_knn", "seq_near")
HISTORY_SEPARATOR = ", "


@functools.cache
def template(task: str) -> str:
    """The prompt template of a task (``genrec/prompts/<task>.txt``), a `str.format` pattern."""
    if task not in TASKS or task in UNTEMPLATED:
        templated = [t for t in TASKS if t not in UNTEMPLATED]
        raise ValueError(f"no template for task {task!r}; templated tasks are {', '.join(templated)}")
    return resources.files("genrec").joinpath("prompts", f"{task}.txt").read_text(encoding="utf-8").strip()


def _words(text: str, max_words: int) -> str:
    return " ".join(str(text).split()[:max_words])


def sid_history_prompt(history_sids: Sequence[str]) -> str:
    """The next-item prompt over SID strings (oldest first); build it from item ids with `next_item_prompt`."""
    return template("seq_sid").format(history=HISTORY_SEPARATOR.join(history_sids))


def prompt_history(history: Sequence[str], known: Mapping[str, object], max_history: int | None) -> list[str]:
    """The items of a history that a prompt shows: those in `known` (items with a SID), the latest `max_history`
    (None or 0: all of them), oldest first."""
    kept = [iid for iid in history if iid in known]
    return kept[-max_history:] if max_history else kept


def next_item_prompt(history: Sequence[str], sids: Mapping[str, str], max_history: int | None = None) -> str:
    """The next-item prompt of a history of item ids (oldest first), from `sids` (item id -> SID string).

    Items without a SID are left out and only the latest `max_history` are kept (`prompt_history`). Every caller
    that turns a history into a prompt comes here, so training and inference read the same text.
    """
    return sid_history_prompt([sids[i] for i in prompt_history(history, sids, max_history)])


def title_history_prompt(history_titles: Sequence[str]) -> str:
    return template("seq_title").format(history="; ".join(history_titles))


@dataclass
class Catalog:
    """What the tasks read: titles, SID strings and (optionally) token semantics and content neighbours."""

    titles: dict[str, str]  # item_id -> title
    sids: dict[str, str]  # item_id -> SID string
    semantics: dict[str, dict] = field(default_factory=dict)  # SID token -> {"description": ...}; may be empty
    neighbours: dict[str, list[str]] = field(default_factory=dict)  # item_id -> nearest items, closest first
    interests: dict[str, list[str]] = field(default_factory=dict)  # item_id -> positive interests, best first

    def __post_init__(self):
        missing = sorted(set(self.sids) - set(self.titles))
        if missing:
            raise ValueError(f"items {missing[:5]} have a SID but no title in the catalog; re-run the quantize "
                             "stage on the current items")


@dataclass
class TaskOptions:
    """Prompt-length knobs shared by every task (filled from the SFT arguments, where their defaults live)."""

    max_history: int | None
    max_title_words: int
    max_description_words: int
    knn_neighbours: int
    max_interests: int
    near_neighbours: int = 1


def _history_examples(task: str, rows: list[dict], catalog: Catalog, opts: TaskOptions) -> list[dict]:
    if task == "seq_near" and not catalog.neighbours:
        raise ValueError("task seq_near needs item neighbours (Catalog.neighbours, from the embed stage's item "
                         "embeddings), or set its ratio to 0 in task_mix")
    out = []
    for row in rows:
        history = prompt_history(row["history"], catalog.sids, opts.max_history)
        if not history or row["target"] not in catalog.sids:
            continue
        if task == "seq_title":
            prompt = title_history_prompt([_words(catalog.titles[i], opts.max_title_words) for i in history])
        else:
            prompt = next_item_prompt(history, catalog.sids)
        targets = [row["target"]]
        if task == "seq_near":
            targets = [i for i in catalog.neighbours.get(row["target"], []) if i in catalog.sids][:opts.near_neighbours]
        out += [{"prompt": prompt, "completion": catalog.sids[t]} for t in targets]
    return out


def build_task_examples(task: str, catalog: Catalog, rows: list[dict], opts: TaskOptions) -> list[dict]:
    """All {"prompt", "completion"} pairs of one task (its pool); `rows` are the train rows."""
    if task in ("seq_sid", "seq_title", "seq_near"):
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
    if task in ("sid2interest", "interest2sid"):
        if not catalog.interests:
            raise ValueError(f"task {task} needs the items' interests (interests.jsonl of the mine and label "
                             "stages); run them first or set its ratio to 0 in task_mix")
        pairs = [(sid, _words("; ".join(catalog.interests[i][: opts.max_interests]), opts.max_description_words))
                 for i, sid in catalog.sids.items() if catalog.interests.get(i)]
        if task == "sid2interest":
            return [{"prompt": template(task).format(sid=sid), "completion": text} for sid, text in pairs]
        return [{"prompt": template(task).format(interests=text), "completion": sid} for sid, text in pairs]
    if task == "seq_knn":
        if not catalog.neighbours:
            raise ValueError("task seq_knn needs item neighbours (Catalog.neighbours, from the embed stage's item "
                             "embeddings), or set its ratio to 0 in task_mix")
        return [{"prompt": sid_history_prompt([catalog.sids[iid]]), "completion": catalog.sids[nb]}
                for iid, nbs in catalog.neighbours.items() for nb in nbs[: opts.knn_neighbours]]
    raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


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


def build_sft_dataset(catalog: Catalog, train_rows: list[dict], tokenizer, mix: dict[str, float],
                      opts: TaskOptions, epochs: float, align_epochs: float = 0.0, seed: int = 0, batch_size: int = 1):
    """The training schedule as a tokenized `datasets.Dataset` (input_ids, labels, task), in training order,
    batches of `batch_size` grouped by length.

    Every example is tokenized once; the schedule is a selection (with repeats) of those rows.
    """
    from datasets import Dataset

    examples, pools = [], {}
    for task in TASKS:
        if mix.get(task, 0) <= 0:
            continue
        task_examples = build_task_examples(task, catalog, train_rows, opts)
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
