"""The special token ids, fixed in every vocabulary: the one place they are defined.

Vocabularies (`kerastx.data.vocab`) write these four tokens first, in this order; masks,
the data pipeline, the decoders and the export read the ids from here.
"""

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# The vocabulary lines of the special ids, in id order, and their names in messages.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
SPECIAL_NAMES = ("PAD", "BOS", "EOS", "UNK")
