"""The B2BUA: a sans-I/O core (``core.py`` and its concepts, ``sip/``) and its asyncio adapters."""

from b2bua import native

# Before any compiled module of this package is imported: the build's directory first, when it matches
# the sources (b2bua/native.py); b2bua/sip/__init__ follows the same decision.
native.use_build(__path__)
