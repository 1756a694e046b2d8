"""Unlearning methods: one file each, one registry."""

from e2urec.methods.base import LossMethod, Method, MethodConfig, Result, Task
from e2urec.methods.registry import METHODS, get_method

__all__ = ["METHODS", "LossMethod", "Method", "MethodConfig", "Result", "Task", "get_method"]
