"""Priors, MBDL models (DEQ, unrolled, VarNet) and their registry."""

from .registry import ArchEntry, create_arch, default_args, get_arch, list_archs, register_arch

__all__ = ["ArchEntry", "create_arch", "default_args", "get_arch", "list_archs", "register_arch"]
