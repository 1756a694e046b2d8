"""Unlearning methods: one file each over one small base (methods/base.py), one registry. They
may import model/, data/ and the shared modules (config, maths, memory), never api or above."""

from e2urec.methods.base import LossMethod, Method, MethodConfig, Result, Task
from e2urec.methods.registry import METHODS, get_method

__all__ = ["METHODS", "LossMethod", "Method", "MethodConfig", "Result", "Task", "get_method"]
