"""Writing outputs: the output location (:mod:`.store`), COGs (:mod:`.cog`) and the layouts
registry (:mod:`.layouts`) that decides which files a kept unit becomes."""

from .cog import write_cog
from .store import TMP_MARK, OutputStore, check_relative, sha256_file, tmp_name

__all__ = ["OutputStore", "write_cog", "TMP_MARK", "sha256_file", "tmp_name", "check_relative"]
