"""Physical channel removal with torch-pruning (algorithms.md §0.1). The only module that imports torch_pruning.

Plan, in original channel indices, per coupled group (torch-pruning's unit of removal):
- free group (one producing conv): a flagged channel is removed physically;
- coupled group (a residual stream): removed stream-wide when at least ``quorum`` of its producers are flagged at
  that index (or always, with ``coupled: remove``); otherwise each flagged producer's branch is zeroed in place;
  with ``coupled: gamma`` a flagged member's channel instead gets gamma = 0 (beta kept) at the BN it is paired with,
  ANP's reference operation: in a pre-activation ResNet that BN reads the stream after the add, so zeroing the
  producing conv's branch, let alone the stream, is a different and much larger cut;
- removal sets are rounded so each remaining width is a multiple of ``round_to``, by adding the next most suspect
  channels, or, where that would cost more than ``max_round_extra`` of the width, by removing fewer and silencing
  the remainder in place (a silenced channel outputs exactly 0, the same as the reference methods).
Everything is first applied as a mask on a copy; the physically pruned model must match it to ``atol``.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from harden.config.prune import PruneStage
from harden.core.artifacts import ChannelScores, ModelArtifact, PruneResult
from harden.core.errors import StageError
from harden.core.train import TrainHook
from harden.prune.surgery import ConstantRoute, constant_routes, pair_convs_with_bns, reshaped_outputs


@dataclass
class _Group:
    root: str
    width: int
    members: list[str]  # out-channel convs of the group (the producers)
    items: list[tuple[str, list[int]]]  # every out-channel module of the group with its idxs (aligned with root)


@dataclass
class _Plan:
    remove: dict[str, list[int]] = field(default_factory=dict)  # root -> root idxs removed physically
    silence: dict[str, list[int]] = field(default_factory=dict)  # root -> root idxs zeroed stream-wide
    branch: dict[str, list[int]] = field(default_factory=dict)  # conv -> idxs zeroed in that branch only
    gamma: dict[str, list[int]] = field(default_factory=dict)  # BN -> idxs with gamma 0, beta kept (coupled: gamma)


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with torch.enable_grad():  # building the graph under no_grad raises inside torch-pruning
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


# Norms that mix channels: removing a channel changes the statistics of the others, so zeroing it in place (the
# mask every removal is checked against) is not what removal does, and scores computed on the full width no longer
# describe the network. Groups they belong to are left whole, and the run says so.
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


def _groups(model: nn.Module, dg: tp.DependencyGraph, classifier: str) -> tuple[list[_Group], dict[str, str]]:
    """The coupled groups of output channels rooted at convs, and {root: why} for those that cannot be pruned."""
    names = dg._module2name
    out, skipped = [], {}
    reshaped = reshaped_outputs(model)
    ignored = [model.get_submodule(classifier)]
    # roots: convs, and linears for the hidden units of MLPs (a transformer's, a ConvNeXt's without conv_mlp)
    for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        items, members = [], []
        root = names[g[0].dep.target.module]
        norms = sorted({names[it.dep.target.module] for it in g
                        if isinstance(it.dep.target.module, CROSS_CHANNEL_NORMS)})
        if norms:
            skipped[root] = f"its channels feed {norms[0]}, a {type(model.get_submodule(norms[0])).__name__} " \
                            "that normalises across channels"
            continue
        split = sorted({names[it.dep.target.module] for it in g if names.get(it.dep.target.module) in reshaped})
        if split:
            skipped[root] = f"{split[0]}'s output is reshaped or split (into attention heads?); single channels " \
                            "cannot be removed from it"
            continue
        for it in g:
            mod = it.dep.target.module
            # a bare parameter (a layer scale) follows its channels when torch-pruning prunes the group; zeroing the
            # producing conv already zeroes what it scales, so the mask need not touch it
            if mod not in names or not isinstance(mod, nn.Module) or not dg.is_out_channel_pruning_fn(it.dep.handler):
                continue
            if list(it.idxs) != list(it.root_idxs):  # a concat or a reshape (attention heads) renumbers channels
                skipped[root] = f"{names[mod]} sees its channels renumbered (a concat or a reshape into heads)"
                break
            items.append((names[mod], list(it.idxs)))
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and names[mod] not in members:
                members.append(names[mod])
        if root not in skipped:
            out.append(_Group(root, len(g[0].idxs), members, items))
    return out, skipped


def plan_removal(groups: list[_Group], scores: ChannelScores, cfg: PruneStage, pairs: dict) -> _Plan:
    plan = _Plan()
    at_bn: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # coupled: gamma -> BN: (flag, score), maybe shared
    for grp in groups:
        scored = [m for m in grp.members if m in scores.layers]
        if not scored:
            continue
        cap = int(math.floor(cfg.max_layer_fraction * grp.width))
        if cfg.coupled == "gamma" and len(grp.members) > 1:
            for member in scored:
                layer, pair = scores.layers[member], pairs.get(member)
                bn = pair.bn if pair else None  # a linear has no BN pairing
                if bn is None:  # no BN to carry gamma = 0: zero the branch
                    idx = _top(layer.flag.bool(), layer.score, cap)
                    if idx:
                        plan.branch[member] = idx
                    continue
                flag, score = at_bn.get(bn, (torch.zeros_like(layer.flag, dtype=torch.bool), layer.score))
                at_bn[bn] = (flag | layer.flag.bool(), torch.maximum(score, layer.score))
            continue
        flags = torch.stack([scores.layers[m].flag for m in scored]).bool()  # members x C
        group_score = torch.stack([scores.layers[m].score for m in scored]).max(0).values
        whole = len(grp.members) == 1 or cfg.coupled == "remove"  # every flag removes the channel group-wide
        remove = flags.any(0) if whole else flags.float().mean(0) >= cfg.quorum
        removal, silenced = _round(_top(remove, group_score, cap), group_score, grp.width, cfg)
        if removal:
            plan.remove[grp.root] = removal
        if silenced:
            plan.silence[grp.root] = silenced
        if whole:
            continue
        gone = torch.zeros(grp.width, dtype=torch.bool)
        gone[removal + silenced] = True
        for row, member in enumerate(scored):
            idx = _top(flags[row] & ~gone, scores.layers[member].score, cap)
            if idx:
                plan.branch[member] = idx
    for bn, (flag, score) in at_bn.items():
        idx = _top(flag, score, int(math.floor(cfg.max_layer_fraction * flag.numel())))
        if idx:
            plan.gamma[bn] = idx
    return plan


def _top(mask: torch.Tensor, score: torch.Tensor, cap: int) -> list[int]:
    idx = torch.nonzero(mask).flatten()
    if len(idx) > cap:
        idx = idx[torch.argsort(score[idx], descending=True)[:cap]]
    return sorted(int(i) for i in idx)


def _round(removal: list[int], score: torch.Tensor, width: int, cfg: PruneStage) -> tuple[list[int], list[int]]:
    """Return (physically removed, silenced in place) so that width - removed is a multiple of round_to."""
    step = cfg.round_to
    left = width - len(removal)
    if not removal or step <= 1 or left % step == 0:
        return removal, []
    down = (left // step) * step  # remaining width if we remove more
    extra = left - down
    if down >= step and extra <= cfg.max_round_extra * width:
        rest = [i for i in torch.argsort(score, descending=True).tolist() if i not in set(removal)]
        return sorted(removal + rest[:extra]), []
    up = min(width, down + step)  # remaining width if we remove fewer; the rest is silenced in place
    n_remove = width - up
    ranked = sorted(removal, key=lambda i: -float(score[i]))
    return sorted(ranked[:n_remove]), sorted(ranked[n_remove:])


def _zero(model: nn.Module, name: str, idxs: list[int]) -> None:
    mod = model.get_submodule(name)
    with torch.no_grad():
        for p in mod.parameters(recurse=False):
            p[idxs] = 0


def _zero_targets(groups: list[_Group], plan: _Plan, pairs: dict) -> dict[str, set[int]]:
    """Every (module, idxs) whose output-channel parameters are set to 0, in original indices."""
    by_root = {g.root: g for g in groups}
    targets: dict[str, set[int]] = defaultdict(set)
    for root, idxs in list(plan.remove.items()) + list(plan.silence.items()):
        for name, _ in by_root[root].items:
            targets[name].update(idxs)
    for conv, idxs in plan.branch.items():
        targets[conv].update(idxs)
        pair = pairs.get(conv)
        if pair and pair.bn and not pair.through_add:  # the conv's own BN: zero it too, or it emits beta - gamma*mu/sigma
            targets[pair.bn].update(idxs)
    return targets


def fold_constants(model: nn.Module, targets: dict[str, set[int]], routes: dict[str, ConstantRoute]
                   ) -> dict[str, list[int]]:
    """For each silenced BN channel with a foldable route, add its constant output ReLU(beta) times the consumers'
    weights to their biases (algorithms.md §0.1-4), so zeroing the channel afterwards keeps what gamma = 0 gave."""
    folded = {}
    with torch.no_grad():
        for bn_name, idxs in targets.items():
            route = routes.get(bn_name)
            if route is None or not idxs:
                continue
            idx = sorted(idxs)
            const = model.get_submodule(bn_name).bias[idx].clone()
            if route.relu:
                const = const.clamp_min(0)
            for name in route.consumers:
                mod = model.get_submodule(name)
                w = mod.weight[:, idx]
                shift = (w.sum((2, 3)) if w.dim() == 4 else w) @ const
                if mod.bias is None:
                    mod.bias = nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=w.dtype, device=w.device))
                mod.bias += shift
            folded[bn_name] = idx
    return folded


def gamma_only(prep: "Prepared", targets: dict[str, set[int]], folded: dict[str, list[int]],
               gamma: dict[str, list[int]]) -> nn.Module:
    """The reference operation the fold approximates: folded BN channels keep beta (gamma = 0), the rest zeroed."""
    model = copy.deepcopy(prep.original)
    _zero_gamma(model, gamma)
    with torch.no_grad():
        for name, idxs in targets.items():
            if name in folded:
                model.get_submodule(name).weight[sorted(idxs)] = 0
            else:
                _zero(model, name, sorted(idxs))
    return model


def _zero_gamma(model: nn.Module, gamma: dict[str, list[int]]) -> None:
    with torch.no_grad():
        for name, idxs in gamma.items():
            model.get_submodule(name).weight[idxs] = 0


class ZeroMask(TrainHook):
    """Training hook: keeps silenced channels at exactly 0 through fine-tuning (they must stay gone), and the
    channels given gamma 0 by coupled: gamma at gamma 0 (their beta trains on)."""

    def __init__(self, zeroed: dict[str, list[int]], gamma: dict[str, list[int]] | None = None):
        self.zeroed = zeroed
        self.gamma = gamma or {}

    def after_step(self, model: nn.Module) -> None:
        for name, idxs in self.zeroed.items():
            _zero(model, name, idxs)
        _zero_gamma(model, self.gamma)


def _shifted(idxs_by_module: dict, removed_by_module: dict[str, set[int]]) -> dict[str, list[int]]:
    """In-place indices, shifted past the channels of the same module that were removed physically."""
    out = {}
    for name, idxs in idxs_by_module.items():
        gone = set(removed_by_module.get(name, ()))
        kept = [i - sum(1 for r in gone if r < i) for i in sorted(idxs) if i not in gone]
        if kept:
            out[name] = kept
    return out


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


@dataclass
class Prepared:
    """The source model copy and its coupled groups, computed once and shared by selection and removal."""

    original: nn.Module
    groups: list[_Group]
    pairs: dict
    example: torch.Tensor
    routes: dict[str, ConstantRoute] = field(default_factory=dict)  # BNs whose constants can be folded
    kept_whole: dict[str, str] = field(default_factory=dict)  # group root -> why it is never pruned


def prepare(art: ModelArtifact) -> Prepared:
    example = torch.randn(2, *art.contract.input_size, generator=torch.Generator().manual_seed(0))
    original = copy.deepcopy(art.model).cpu().eval()
    groups, kept_whole = _groups(original, _graph(original, example[:1]), art.classifier)
    return Prepared(original, groups, pair_convs_with_bns(original), example, constant_routes(original), kept_whole)


def masked_model(prep: Prepared, scores: ChannelScores, cfg: PruneStage
                 ) -> tuple[nn.Module, _Plan, dict, dict[str, list[int]]]:
    """A copy of the source with every planned channel silenced in place (constants folded first when asked): what
    pruning must equal. Returns (model, plan, zero targets, folded BN channels)."""
    plan = plan_removal(prep.groups, scores, cfg, prep.pairs)
    targets = _zero_targets(prep.groups, plan, prep.pairs)
    masked = copy.deepcopy(prep.original)
    folded = fold_constants(masked, targets, prep.routes) if cfg.silence == "fold" else {}
    for name, idxs in targets.items():
        _zero(masked, name, sorted(idxs))
    _zero_gamma(masked, plan.gamma)
    return masked, plan, targets, folded


def run(cfg: PruneStage, art: ModelArtifact, scores: ChannelScores, device: torch.device,
        prep: Prepared | None = None) -> tuple[ModelArtifact, PruneResult]:
    """Remove the planned channels physically and return the smaller model with its replayable history."""
    prep = prep or prepare(art)
    example = prep.example
    macs_before, params_before = count(prep.original, example[:1])
    masked, plan, targets, folded = masked_model(prep, scores, cfg)
    groups = prep.groups
    pruned = copy.deepcopy(masked)
    dg = _graph(pruned, example[:1])
    removed_by_module: dict[str, set[int]] = defaultdict(set)
    by_root = {g.root: g for g in groups}
    for root, idxs in plan.remove.items():
        mod = pruned.get_submodule(root)
        fn = tp.prune_linear_out_channels if isinstance(mod, nn.Linear) else tp.prune_conv_out_channels
        group = dg.get_pruning_group(mod, fn, idxs=idxs)
        if not dg.check_pruning_group(group):
            raise StageError("prune", f"removing {len(idxs)} channels of {root} would empty a layer")
        group.prune()
        for name, _ in by_root[root].items:
            removed_by_module[name].update(idxs)
    zeroed, gamma = _shifted(targets, removed_by_module), _shifted(plan.gamma, removed_by_module)

    with torch.inference_mode():
        diff = float((masked(example) - pruned(example)).abs().max())
    if not diff <= cfg.atol:
        raise StageError("prune", f"pruned model differs from the masked model by {diff:.2e} > atol {cfg.atol:.0e}; "
                                  "this is a graph-pairing bug in harden, please report it with the model")
    fold_diff = None
    if folded:
        with torch.inference_mode():
            fold_diff = float((gamma_only(prep, targets, folded, plan.gamma)(example) - masked(example)).abs().max())
    macs_after, params_after = count(pruned, example[:1])
    result = PruneResult(
        removed=plan.remove,
        zeroed=zeroed,
        history=dg.pruning_history(),
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        max_abs_diff_vs_masked=diff,
        folded=folded,
        fold_max_abs_diff=fold_diff,
        gamma_zeroed=gamma,
        kept_whole=prep.kept_whole,
    )
    out = copy.copy(art)
    out.model = pruned.to(device).eval()
    return out, result


