"""Limits on what a user gives, checked before anything else (docs/bad-input.md); importing this module is free.

Far above any search space or sensible search, low enough that every genome within them validates and hashes
in about a second.
"""

MAX_GENOME_BYTES = 1 << 20  # a genome file
MAX_OPS = 256  # genome nodes besides input and output; also the most a space's min_nodes/max_nodes may be
MAX_EDGES = 4096
MAX_ID_LENGTH = 100  # characters of a node id
MAX_JSON_DEPTH = 10  # nesting of arrays and objects in a genome (a genome needs 4)
MAX_NUMBER_DIGITS = 20  # digits of an integer in a genome
