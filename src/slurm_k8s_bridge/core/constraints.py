"""``--constraint``: Slurm's feature expressions (``&`` ``,`` ``|`` left to right, ``(...)``,
``[a|b]``) parsed and mapped onto node shapes and node labels, and how the pods are placed
(node affinity terms, one shape for all pods). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape, PartitionRule
from slurm_k8s_bridge.core.errors import BridgeRefusal, refusal, shown
from slurm_k8s_bridge.core.request import LabelRequirement, NodeSelectorTerm


#: Largest number of alternatives a --constraint may expand to.
MAX_CONSTRAINT_TERMS = 64


@dataclass(frozen=True)
class _Term:
    """One alternative of a constraint: the shapes it allows and the node labels it needs."""

    shapes: tuple[NodeShape, ...]
    labels: Mapping[str, str]
    features: frozenset[str]

    def within(self, shapes: Sequence[NodeShape]) -> _Term:
        return replace(self, shapes=tuple(s for s in self.shapes if s in shapes))


@dataclass(frozen=True)
class ConstraintExpr:
    """A parsed --constraint: alternatives (each a set of features that must all hold)."""

    alternatives: tuple[frozenset[str], ...]
    #: features inside ``[a|b]``: every node must pick the same one
    matching: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f for alt in self.alternatives for f in alt)


def parse_constraint(text: str) -> ConstraintExpr:
    """Parse Slurm's feature expression: ``&`` ``,`` ``|`` left to right, ``(...)``, ``[...]``."""
    tokens = re.findall(r"[&|,()\[\]*]|[^&|,()\[\]*\s]+|\s+", text)
    tokens = [t for t in tokens if not t.isspace()]
    if "".join(tokens) != re.sub(r"\s+", "", text) or not tokens:
        raise _bad_constraint(text)
    parser = _ConstraintParser(tokens, text)
    alternatives = parser.expression()
    if parser.pos != len(tokens):
        raise _bad_constraint(text)
    return ConstraintExpr(tuple(alternatives), frozenset(parser.matching))


def _bad_constraint(text: str) -> BridgeRefusal:
    return refusal(f"--constraint={shown(text)} is not a valid feature expression", "ESLURM_INVALID_FEATURE")


class _ConstraintParser:
    """Recursive descent over the tokens; alternatives are sets of features (DNF)."""

    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.pos = 0
        self.matching: set[str] = set()
        self.brackets = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _bad_constraint(self.text)
        self.pos += 1
        return token

    def expression(self) -> list[frozenset[str]]:
        result = self.operand()
        while self.peek() in ("&", ",", "|"):
            op = self.take()
            right = self.operand()
            if op == "|":
                result = list(dict.fromkeys(result + right))
            else:
                result = list(dict.fromkeys(a | b for a in result for b in right))
            if len(result) > MAX_CONSTRAINT_TERMS:
                raise refusal(f"--constraint={shown(self.text)} has more than {MAX_CONSTRAINT_TERMS} alternatives",
                               "ESLURM_INVALID_FEATURE")
        return result

    def operand(self) -> list[frozenset[str]]:
        token = self.take()
        if token in ("(", "["):
            closing = ")" if token == "(" else "]"
            if token == "[":
                self.brackets += 1
                if self.brackets > 1:
                    raise _bad_constraint(self.text)
            inner = self.expression()
            if self.take() != closing:
                raise _bad_constraint(self.text)
            if token == "[" and len(inner) > 1:
                self.matching.update(f for alt in inner for f in alt)
            return inner
        if token in "&,|)]*":
            raise _bad_constraint(self.text)
        if self.peek() == "*":
            raise refusal(f"--constraint={shown(self.text)}: feature counts ({shown(token)}*N) are not supported by "
                           "slurm-k8s-bridge", "ESLURM_NOT_SUPPORTED")
        return [frozenset([token])]


def _constraint_terms(features: str | None, config: BridgeConfig,
                      rule: PartitionRule) -> tuple[tuple[_Term, ...], bool]:
    """The constraint's alternatives over the partition's shapes, and whether it is a
    matching OR (``[a|b]``: all nodes alike)."""
    partition_shapes = config.shapes_of(rule)
    if not features:
        return (_Term(partition_shapes, {}, frozenset()),), False
    expr = parse_constraint(features)
    known = {f for s in partition_shapes for f in s.features} | set(config.node_features)
    for alternative in expr.alternatives:
        for name in sorted(alternative - known):
            raise refusal(f"--constraint={shown(features)} names feature {shown(name)}, which no node of partition "
                           f"{shown(rule.name)} has (features: {', '.join(sorted(known))})", "ESLURM_INVALID_FEATURE")
    if expr.matching & set(config.node_features):
        names = ", ".join(sorted(expr.matching & set(config.node_features)))
        raise refusal(f"--constraint={shown(features)}: [a|b] over node features ({names}) is not supported by "
                       "slurm-k8s-bridge; use it over GPU shape features", "ESLURM_NOT_SUPPORTED")
    terms = []
    for alternative in expr.alternatives:
        term = _term(alternative, config, partition_shapes)
        if term is not None:
            terms.append(term)
    if not terms:
        raise refusal(f"--constraint={shown(features)} matches no GPU node shape in partition {shown(rule.name)}",
                       "ESLURM_INVALID_FEATURE")
    return tuple(terms), bool(expr.matching)


def _term(alternative: frozenset[str], config: BridgeConfig, shapes: tuple[NodeShape, ...]) -> _Term | None:
    labels: dict[str, str] = {}
    for name in sorted(alternative & set(config.node_features)):
        for key, value in config.node_features[name].items():
            if labels.get(key, value) != value:
                return None
            labels[key] = value
    wanted = alternative - set(config.node_features)
    allowed = tuple(s for s in shapes if wanted <= set(s.features)
                    and all(s.node_labels.get(k, v) == v for k, v in labels.items()))
    if not allowed:
        return None
    return _Term(allowed, labels, alternative)


def _node_placement(terms: tuple[_Term, ...], chosen: tuple[NodeShape, ...],
                    rule: PartitionRule) -> tuple[dict[str, str], tuple[NodeSelectorTerm, ...]]:
    node_selector = dict(rule.node_selector)
    labels_in_selector = len(terms) == 1
    if labels_in_selector:
        node_selector.update(terms[0].labels)
    out: list[NodeSelectorTerm] = []
    for term in terms:
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
        for shape in term.shapes:
            if shape not in chosen:
                continue
            key = (shape.gpu_product_label, tuple(sorted(shape.node_labels.items())))
            products = groups.setdefault(key, [])
            if shape.gpu_product not in products:
                products.append(shape.gpu_product)
        for (product_label, node_labels), products in groups.items():
            requirements = [LabelRequirement(product_label, tuple(products))]
            extra = dict(node_labels)
            if not labels_in_selector:
                extra.update(term.labels)
            requirements += [LabelRequirement(k, (v,)) for k, v in sorted(extra.items())]
            selector_term = NodeSelectorTerm(tuple(requirements))
            if selector_term not in out:
                out.append(selector_term)
    return node_selector, tuple(out)


def _same_shape_key(matching: bool, chosen: tuple[NodeShape, ...], nodes: int) -> str | None:
    if not matching or nodes <= 1 or len({s.gpu_product for s in chosen}) <= 1:
        return None
    keys = {s.gpu_product_label for s in chosen}
    return keys.pop() if len(keys) == 1 else None


def _node_features(features: str | None, terms: tuple[_Term, ...], chosen: tuple[NodeShape, ...]) -> tuple[str, ...]:
    """Features the dynamic Slurm nodes advertise: every name the constraint uses, so slurmctld
    accepts the nodes for the job, plus the features all candidate shapes share."""
    common = set(chosen[0].features).intersection(*(s.features for s in chosen[1:])) if chosen else set()
    named = {f for t in terms for f in t.features}
    return tuple(sorted(common | named))


