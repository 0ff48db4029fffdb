"""What a mutant is: one small patch that deletes or breaks one feature."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A patch of one file and the tests that must catch it.

    Attributes:
        name: A short, unique, kebab-case name (`guard-loss-only`).
        feature: The documented feature the patch deletes or breaks, one
            line.
        file: The patched file, relative to the repository root.
        old: Text that occurs exactly once in `file`.
        new: What replaces it.
        tests: The test files (or node ids) that must turn red; the
            script runs these and nothing else.
    """

    name: str
    feature: str
    file: str
    old: str
    new: str
    tests: tuple
