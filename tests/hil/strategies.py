"""Hypothesis strategies for each kernel's arguments: every registry kernel needs one."""

from hypothesis import strategies as st

ARGUMENTS = {
    "crc32c": st.tuples(st.binary(max_size=3000)),
}
