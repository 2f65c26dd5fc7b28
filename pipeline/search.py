"""The tune search: which quantizer groups go back to FP32, decided greedily from experiments.

Pure decision logic: experiments are run by a callback (on the cluster, or
from trials a resumed search already has) and return ValidationStats; every
decision depends only on those values and the groups' graph order, so the
same inputs give the same ranking and the same reverted set for any number
of workers.

1. Rank: one experiment per remaining group, the model with that group (and
   those already reverted) in FP32, scored on the ranking rows (the
   validation samples the full INT8 model gets most wrong), and one of the
   model as it stands; groups are ordered by what their revert gains per
   weighted node it takes out of INT8. The first round can also score each
   group alone quantized (its isolated error).
2. Walk the ranking: revert the next group, scored on every validation row;
   keep it if the metric improves, skip it if not, until the target holds.
   `patience` skips in a row end the walk and the groups are ranked again
   (a ranking costs one experiment per group, a skip one). The walk runs
   `speculate` prefixes at once (reverted + g1, + g1 g2, ...), so the
   workers stay busy; prefixes after a skipped group are scored again
   without it.
   Groups holding none of the weighted nodes (`restore`: MatMul, Conv, Gemm)
   go first: ranked and walked alone until none of them improves the metric,
   and only then every group. Their FP32 costs no weighted node's INT8,
   where a group of a few nodes after a LayerNormalization can hold three
   MatMuls for a gain of 0.001.
3. Stop when the target holds on every validation row, when no group
   improves the metric, or when the time is up (the best so far stands).
4. Put back: once the target holds, the reverted groups holding a weighted
   node are quantized again one after another while the target still holds
   (a group the walk needed early can be needless after later reverts):
   the one whose revert gained least in the walk first, as that is the one
   the target most likely does without, until `PUT_BACK_MISSES` in a row
   break it (the others gained more).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dask_quant.pipeline.target import Target
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.validate import ValidationStats

RANKING, WALK, ALL = "ranking", "walk", "all"
# Put-back candidates in a row that break the target before the put-back ends: they come in the order of
# what their revert gained, so after two misses the rest gained at least as much. Trying every candidate alone
# first cost MiniLM's MatMul-only search nine experiments on every validation row to put back two.
PUT_BACK_MISSES = 2


@dataclass(frozen=True)
class Experiment:
    """One variant to score: `reverted` nodes in FP32, on the ranking rows or all validation rows."""

    phase: str  # "baseline", "rank", "isolated", "step" or "restore"
    reverted: tuple[str, ...]
    group: str | None
    rows: str


@dataclass(frozen=True)
class SearchResult:
    reverted: tuple[str, ...]  # nodes in FP32
    final: ValidationStats  # on every validation row (on the walk's rows if the time ran out before those)
    baseline: ValidationStats
    met: bool
    rankings: tuple[tuple[tuple[str, float], ...], ...] = ()  # per round: (group, metric with it reverted)
    isolated: tuple[tuple[str, float], ...] = ()  # (group, metric with only it quantized)
    stopped: str = ""  # why the search ended
    experiments: int = 0
    rounds: int = field(default=0)
    groups: tuple[str, ...] = ()  # the groups reverted, in the order the walk took them


def _key(target: Target, stats: ValidationStats) -> tuple[float, float]:
    """Order of merit: the target's metric, then mean cosine (NaN last)."""
    values = (target.value(stats), stats.mean_cosine)
    return tuple(-math.inf if math.isnan(v) else v for v in values)


def _merit(target: Target, stats: ValidationStats, here: float, cost: int) -> tuple[float, ...]:
    """Sort key of a group in a ranking (first = most worth reverting): what reverting it gains on the
    ranking rows per weighted node it takes out of INT8, so a group of three MatMuls must gain three times
    what one MatMul gains to go first (a group without one counts as one); then the metric itself."""
    # From a model without a metric (broken: collapsed, not finite), a revert gains what it reaches above the
    # metric's floor.
    gain = (target.value(stats) - (target.floor if math.isnan(here) else here)) / max(1, cost)
    return (math.inf if math.isnan(gain) else -gain, *(-v for v in _key(target, stats)))


def _gain(target: Target, before: ValidationStats, after: ValidationStats) -> float:
    """What a step of the walk gained: everything when it gave a model without a metric one, nothing when
    the model still has none (the mean cosine let it through)."""
    was, now = target.value(before), target.value(after)
    if math.isnan(now):
        return 0.0
    return math.inf if math.isnan(was) else now - was


def greedy_search(
    groups: Mapping[str, Sequence[str]] | Sequence[str],
    target: Target,
    run: Callable[[list[Experiment]], list[ValidationStats | None]],
    *,
    speculate: int = 4,
    speculate_every_row: int | None = None,
    patience: int = 4,
    isolated: bool = True,
    restore: frozenset[str] = frozenset(),
    walk_rows: str = ALL,
    log: Callable[[str], None] = lambda _: None,
) -> SearchResult:
    """Revert groups (name -> its nodes; a bare name is a group of that one node) until `target` holds on
    every validation row, those without a node of `restore` first, then put back reverted groups that hold
    a node of `restore` while it still holds.
    The walk scores its steps on `walk_rows` (WALK: a sample of the validation rows; ALL: every row); a
    step that meets the target there is scored on every row too, and only that ends the walk. If it misses
    there, the sample has shown it does not stand for every row, and the walk goes on on every row.
    `run` returns None for experiments it did not finish (the time budget ran out): the search then ends
    with the best so far. `speculate` models are scored at once on the ranking's and the walk's rows,
    `speculate_every_row` (None: `speculate`) on every row, where `run` may split each over the workers.
    Neither changes a decision."""
    every_row = speculate if speculate_every_row is None else speculate_every_row
    members = {g: tuple(groups[g]) for g in groups} if isinstance(groups, Mapping) else {g: (g,) for g in groups}
    labels = tuple(members)
    order_of = {group: index for index, group in enumerate(labels)}
    node_order: dict[str, int] = {}
    for group in labels:
        for node in members[group]:
            node_order.setdefault(node, len(node_order))
    count = 0

    def canonical(nodes) -> tuple[str, ...]:
        return tuple(sorted(set(nodes), key=node_order.__getitem__))

    known: dict[tuple, ValidationStats] = {}

    def score(experiments: list[Experiment]) -> list[ValidationStats | None]:
        """Each distinct model once: two groups can leave the same nodes in FP32, and a put-back can ask
        for a model already scored."""
        nonlocal count
        first = {}
        for e in experiments:
            if (e.rows, e.reverted) not in known:
                first.setdefault((e.rows, e.reverted), e)
        count += len(first)
        if first:
            for key, value in zip(first, run(list(first.values())), strict=True):
                if value is not None:
                    known[key] = value
        return [known.get((e.rows, e.reverted)) for e in experiments]

    # The groups without a weighted node first, then every group (one tier when that is all of them).
    unweighted = tuple(g for g in labels if not restore.intersection(members[g]))
    tiers = [unweighted, labels] if unweighted and len(unweighted) < len(labels) else [labels]
    # On every row, then on the walk's rows (the same model, free when those are every row).
    (baseline,) = score([Experiment("baseline", (), None, ALL)])
    (current,) = score([Experiment("baseline", (), None, walk_rows)]) if baseline is not None else (None,)
    if baseline is None or current is None:
        msg = "--time-budget ran out before the full INT8 model was even scored: allow more time"
        raise InputError(msg)
    if walk_rows != ALL and target.met(current) and not target.met(baseline):
        walk_rows, current = ALL, baseline  # the walk's rows flatter the full INT8 model: every row decides
    reverted, taken = (), ()
    confirmed = ((), (), baseline)  # the last (reverted, taken, statistics on every row) the walk reached
    # What each group the walk took gained on its rows (on every row once the walk moved there): the
    # put-back's order, a guess that never decides alone.
    gains: dict[str, float] = {}

    def on() -> str:
        return "every validation row" if walk_rows == ALL else "the walk's rows"

    rankings, alone, stopped = [], (), ""
    while not stopped:
        if confirmed[0] == reverted and target.met(confirmed[2]):
            stopped = "target met"
            break
        remaining = [g for g in tiers[0] if not set(members[g]) <= set(reverted)]
        if not remaining and len(tiers) > 1:
            tiers.pop(0)
            continue
        if not remaining:
            stopped = "every group is in FP32"
            break
        batch = [Experiment("rank", canonical((*reverted, *members[g])), g, RANKING) for g in remaining]
        batch.append(Experiment("rank", reverted, None, RANKING))  # what each revert gains is measured from here
        if isolated and not rankings:
            everything = set(node_order)
            batch += [Experiment("isolated", canonical(everything - set(members[g])), g, RANKING) for g in labels]
        stats = score(batch)
        if any(s is None for s in stats):
            stopped = "time budget"
            break
        ranked = {e.group: s for e, s in zip(batch, stats, strict=True) if e.phase == "rank"}
        here = target.value(ranked.pop(None))
        if isolated and not rankings:
            pairs = zip(batch, stats, strict=True)
            alone = tuple((e.group, target.value(s)) for e, s in pairs if e.phase == "isolated")
        cost = {g: len(restore.intersection(members[g]) - set(reverted)) for g in remaining}
        order = sorted(remaining, key=lambda g: (*_merit(target, ranked[g], here, cost[g]), order_of[g]))
        rankings.append(tuple((g, target.value(ranked[g])) for g in order))
        log(f"ranked {len(order)} groups; most sensitive: {', '.join(order[:3])}")
        improved, walk, pending, misses = False, True, list(order), 0
        while walk and pending:
            part, prefixes, ahead, popped, new = [], [], reverted, [], 0
            at_once = speculate if walk_rows != ALL else every_row
            while pending and new < at_once:  # models not scored yet (a known one is free)
                group = pending.pop(0)
                popped.append(group)
                prefix = canonical((*ahead, *members[group]))
                if prefix != ahead:  # a group the steps before already took back adds nothing
                    part.append(group)
                    prefixes.append(prefix)
                    ahead = prefix
                    new += (walk_rows, prefix) not in known
            if not part:
                break
            steps = score([Experiment("step", p, g, walk_rows) for p, g in zip(prefixes, part, strict=True)])
            for prefix, group, step in zip(prefixes, part, steps, strict=True):
                if step is None:
                    stopped, walk = "time budget", False
                    break
                if _key(target, step) <= _key(target, current):
                    # No better: skip it and walk on from here (the steps scored after it included it),
                    # until `patience` in a row miss; then rank again.
                    misses += 1
                    # What came after it goes back, also a group its prefix covered: the same walk as one
                    # step at a time, for any `speculate`.
                    pending[:0] = popped[popped.index(group) + 1 :]
                    walk = misses < patience
                    break
                gains[group] = _gain(target, current, step)
                reverted, current, improved, taken, misses = prefix, step, True, (*taken, group), 0
                size = f" ({len(members[group])} nodes)" if len(members[group]) > 1 else ""
                log(f"reverted {group}{size}: {target.metric} {target.shown(current)} on {on()}")
                if target.met(current):
                    # Met on the walk's rows: only every row decides (free when those are every row). The
                    # put-back's first models are scored with it, on the threads it would leave idle.
                    spare = every_row - 1 if walk_rows != ALL else 0
                    ahead = _first_put_backs(taken, gains, members, canonical, restore, spare)
                    everywhere, *_ = score([Experiment("confirm", reverted, group, ALL), *ahead])
                    if everywhere is None:
                        stopped, walk = "time budget", False
                        break
                    confirmed = (reverted, taken, everywhere)
                    if walk_rows != ALL:
                        value = target.shown(everywhere)
                        log(f"on every validation row: {target.metric} {value}")
                    if target.met(everywhere):
                        walk = False
                        break
                    if walk_rows != ALL:  # the sample says met, every row does not: on every row from here
                        log("the walk's rows meet the target and every row does not: walking on every row")
                        walk_rows, current = ALL, everywhere
                        pending[:0] = popped[popped.index(group) + 1 :]
                        break
        if not improved and not stopped and len(tiers) > 1:
            tiers.pop(0)
            log("no group without a MatMul, Conv or Gemm improves the metric further: ranking every group")
        elif not improved and not stopped and walk_rows != ALL:
            # Nothing helps on the walk's rows, which may simply have nothing left to gain: every row decides.
            (everywhere,) = score([Experiment("confirm", reverted, taken[-1] if taken else None, ALL)])
            if everywhere is None:
                stopped = "time budget"
                break
            confirmed = (reverted, taken, everywhere)
            log("no group improves the metric on the walk's rows: walking on every row")
            walk_rows, current = ALL, everywhere
        elif not improved and not stopped:
            stopped = "no remaining group improves the metric"
    if confirmed[0] != reverted and stopped != "time budget":  # where the walk ended, on every row
        (everywhere,) = score([Experiment("confirm", reverted, taken[-1] if taken else None, ALL)])
        if everywhere is None:
            stopped = "time budget"
        else:
            confirmed = (reverted, taken, everywhere)
    if confirmed[0] != reverted:  # the time is up: the walk's last model stands, not met until every row says so
        return SearchResult(
            reverted, current, baseline, False, tuple(rankings), alone, stopped, count, len(rankings), taken
        )
    current = confirmed[2]
    if target.met(current) and restore:

        def scored(experiment: Experiment) -> bool:
            return (experiment.rows, experiment.reverted) in known

        put = _put_back(taken, gains, members, canonical, target, current, restore, score, log, every_row, scored)
        taken, reverted, current = put
    return SearchResult(
        reverted, current, baseline, target.met(current), tuple(rankings), alone, stopped, count, len(rankings), taken
    )


def _nodes(groups, members, leaving=()) -> set[str]:
    """The nodes of `groups` but those in `leaving`."""
    return {n for g in groups if g not in leaving for n in members[g]}


def _put_back_order(taken, gains, members, restore) -> tuple[list, list]:
    """(the groups the walk took, less those the others cover; the put-back's candidates in order: those
    holding a node of `restore`, the one whose revert gained least first)."""
    taken = list(taken)
    for group in reversed(tuple(taken)):  # a group the others cover adds nothing: no experiment needed
        if set(members[group]) <= _nodes(taken, members, {group}):
            taken.remove(group)
    candidates = [g for g in taken if restore.intersection(members[g]) - _nodes(taken, members, {g})]

    return taken, sorted(candidates, key=lambda g: (gains.get(g, 0.0), taken.index(g)))


def _first_put_backs(taken, gains, members, canonical, restore, count: int) -> list[Experiment]:
    """The first `count` models the put-back would score if the target held with `taken` in FP32 (each
    candidate put back after the ones before it)."""
    if not restore or count < 1:
        return []
    taken, pending = _put_back_order(taken, gains, members, restore)
    back, models = set(), []
    for group in pending[:count]:
        back.add(group)
        models.append(Experiment("restore", canonical(_nodes(taken, members, back)), group, ALL))
    return models


def _put_back(
    taken, gains, members, canonical, target, current, restore, score, log, speculate=4, known=lambda _: False
):
    """Quantize again the reverted groups holding a node of `restore` (the weighted ones) that the target can
    do without: a group the walk needed early can be needless once later groups are in FP32.

    One after another, the group whose revert gained least in the walk first (`gains`), each kept in INT8
    while the target still holds on every validation row, until PUT_BACK_MISSES in a row break it; `speculate`
    models not yet scored at a time, each as if put back one at a time, so the decisions never depend on it.
    (On the walk's rows, its margins are too thin: on MiniLM a third put-back held there, 0.99511, and not on
    every row, and going back cost more than the sample saved.)
    """
    taken, pending = _put_back_order(taken, gains, members, restore)

    def without(groups) -> tuple[str, ...]:
        return canonical(_nodes(taken, members, groups))

    misses = 0
    while pending and misses < PUT_BACK_MISSES:
        part, back, steps, new = [], set(), [], 0
        while pending and new < speculate:
            part.append(pending.pop(0))
            back.add(part[-1])
            steps.append(Experiment("restore", without(back), part[-1], ALL))
            new += not known(steps[-1])
        for i, (step, stats) in enumerate(zip(steps, score(steps), strict=True)):
            if stats is None:  # the time budget ran out: what is back so far stands
                return tuple(taken), without(()), current
            if not target.met(stats):
                misses += 1
                pending[:0] = part[i + 1 :]  # scored with the one that broke it: again without
                break
            taken.remove(step.group)
            current, misses = stats, 0
            log(f"put back {step.group}: {target.metric} {target.shown(current)} on every validation row")
    return tuple(taken), without(()), current
