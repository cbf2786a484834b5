"""The plugin contract is the code: base classes, the table of distillctl.contracts and the hook docstrings
agree, and what a factory returns is checked (duck-typed components get the base-class defaults)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from distillctl import UserError, hookspecs
from distillctl.contracts import CONTRACTS, conform, member_signature
from distillctl.plugins import KIND_HOOKS, KINDS, PluginInfo
from distillctl.scheduling import Job, JobHandle, Scheduler

REPO = Path(__file__).resolve().parents[1]


def public_members(cls: type) -> set[str]:
    """Public members a class defines or inherits, except what every object (or nn.Module) already has."""
    skip = set(dir(object))
    return {n for klass in cls.__mro__ if klass not in (object,) and not klass.__module__.startswith("typing")
            for n in vars(klass) if not n.startswith("_") and n not in skip}


def test_every_kind_has_a_contract_and_a_hook():
    assert set(CONTRACTS) == set(KINDS)
    for kind, contract in CONTRACTS.items():
        assert contract.hook == KIND_HOOKS[kind]
        assert hasattr(hookspecs, contract.hook)


def test_the_student_contract_sits_in_the_module_named_for_it():
    from distillctl.students import Student

    assert CONTRACTS["student"].base == "distillctl.students.Student"
    assert CONTRACTS["student"].base_class() is Student and Student.__module__ == "distillctl.students"
    assert not hasattr(__import__("distillctl.contracts").contracts, "Student")  # one home, no alias


@pytest.mark.parametrize("kind", KINDS)
def test_contract_lists_every_public_member_of_the_base_class(kind):
    """A member added to a base class must be classified as required or optional (and documented)."""
    contract = CONTRACTS[kind]
    base = contract.base_class()
    listed = set(contract.required) | set(contract.optional)
    assert public_members(base) == listed, f"{contract.base}: update distillctl.contracts.CONTRACTS[{kind!r}]"


@pytest.mark.parametrize("kind", KINDS)
def test_hook_docstring_names_base_class_and_every_member_with_its_signature(kind):
    contract = CONTRACTS[kind]
    base = contract.base_class()
    doc = " ".join(inspect.getdoc(getattr(hookspecs, contract.hook)).split())
    assert contract.base in doc
    assert contract.factory.split("(")[1].rstrip(")") in doc  # the factory's arguments
    for member in contract.required + contract.optional:
        sig = member_signature(base, member)
        assert f"``{sig}``" in doc, f"{contract.hook} docstring must name ``{sig}``"
    required_part, _, optional_part = doc.partition("Optional:")
    for member in contract.required:
        assert member_signature(base, member) in required_part, member
    for member in contract.optional:
        assert member_signature(base, member) in optional_part, member


@pytest.mark.parametrize("kind", [k for k in KINDS if CONTRACTS[k].checked])
def test_required_members_fail_clearly_and_optional_ones_work_on_the_base_class(kind):
    contract = CONTRACTS[kind]
    base = contract.base_class()
    for member in contract.optional:
        assert hasattr(base, member), member
    # a subclass that implements nothing is refused at build time, naming the plugin and what is missing
    empty = type("Empty", (base,), {})
    obj = empty.__new__(empty)
    with pytest.raises(UserError, match=rf"{kind} plugin 'x' \(package pkg 1\.0, mod\): Empty does not implement"):
        conform(PluginInfo(kind, "x", lambda o: obj, object, "pkg", "1.0", "mod"), obj)


def info(kind: str, name: str = "x") -> PluginInfo:
    return PluginInfo(kind, name, lambda o: None, object, "pkg", "1.0", "mod")


class DuckScheduler:
    """What a plugin author wrote from the old docstring: no base class, no describe / preflight / name."""

    def submit(self, jobs, folder):
        return [JobHandle(j.id, "duck", state="done") for j in jobs]

    def status(self, handles):
        return list(handles)

    def cancel(self, handles):
        pass


def test_duck_typed_scheduler_gets_the_defaults(tmp_path):
    sched = conform(info("scheduler", "duck"), DuckScheduler())
    jobs = [Job("a", ["echo", "a"], str(tmp_path), str(tmp_path / "a.log")),
            Job("b", ["echo", "b"], str(tmp_path), str(tmp_path / "b.log"), depends_on=["a"])]
    assert sched.name == "duck" and sched.options is None and sched.poll_seconds == 5.0
    sched.preflight()
    text = sched.describe(jobs, tmp_path)
    assert "duck scheduler: 2 jobs" in text and "b (after a): echo b" in text
    (tmp_path / "a.log").write_text("hello\n")
    handle = JobHandle("a", "duck", log=str(tmp_path / "a.log"))
    assert sched.log_files(handle) == [str(tmp_path / "a.log")] and sched.logs(handle) == "hello\n"


def test_subclass_with_only_required_methods_is_complete(tmp_path):
    class Mine(Scheduler):
        def submit(self, jobs, folder):
            return []

        def status(self, handles):
            return []

        def cancel(self, handles):
            pass

    sched = conform(info("scheduler", "mine"), Mine())
    assert sched.name == "mine" and sched.describe([], tmp_path).startswith("mine scheduler: 0 jobs")


def test_incomplete_components_are_user_errors_naming_the_plugin():
    class NoStatus:
        def submit(self, jobs, folder):
            return []

        def cancel(self, handles):
            pass

    with pytest.raises(UserError, match=r"scheduler plugin 'x' .*NoStatus does not implement status\(\)"):
        conform(info("scheduler"), NoStatus())
    with pytest.raises(UserError, match="its factory returned None"):
        conform(info("dataset"), None)


def test_unroll_strategy_needs_plan_or_meta_gradient():
    from distillctl.unrolling import UnrollStrategy

    class NoPlan(UnrollStrategy):
        pass

    class Plan(UnrollStrategy):
        def plan(self, generator):
            return 0, 1

    class Implicit(UnrollStrategy):
        def meta_gradient(self, problem, learnables, real_x, real_y, generator):
            raise NotImplementedError

    with pytest.raises(UserError, match=r"NoPlan does not implement plan\(\)"):
        conform(info("unroll"), NoPlan())
    assert conform(info("unroll", "p"), Plan()).name == "p"
    assert conform(info("unroll", "i"), Implicit()).name == "i"


def test_duck_typed_encoder_and_dataset_get_load_describe_and_pair_mode():
    class Enc:
        def identity(self):
            return {}

        dim = 3

        def encode(self, texts, pairs=None, *, batch_size=64, progress=None):
            return None

    class Source:
        def identity(self):
            return {}

        def load(self):
            return None

    enc = conform(info("encoder", "enc"), Enc())
    enc.load("cpu")
    assert enc.describe() == "enc" and enc.pair_mode == "features" and enc.name == "enc"
    src = conform(info("dataset", "src"), Source())
    assert src.describe() == "src"


def test_method_subclass_without_step_is_refused():
    from distillctl.methods import Method

    class NoStep(Method):
        pass

    with pytest.raises(UserError, match=r"NoStep does not implement step\(\)"):
        conform(info("method"), NoStep())


def test_docs_guide_covers_every_kind():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    for kind, contract in CONTRACTS.items():
        assert contract.hook in guide, contract.hook
        base = contract.base_class()
        for member in contract.required + contract.optional:
            assert f"`{member_signature(base, member)}`" in guide, (kind, member)
    assert "from distillctl import UserError" in guide and "exits 2" in guide
