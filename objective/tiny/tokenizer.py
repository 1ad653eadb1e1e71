"""Character-level tokenizer for the tiny model, built with the `tokenizers` library.

Why a real PreTrainedTokenizerFast: it is saved as a normal Hugging Face tokenizer directory and
loaded offline with `from_pretrained(dir, local_files_only=True)`, like the real path. The loader
(`objective.tiny.load_tiny`) must name `PreTrainedTokenizerFast` itself: `AutoTokenizer` maps the
checkpoint's model_type qwen2 to Qwen2's byte-level tokenizer, which drops spaces. One token per
character keeps the arithmetic task's digits aligned with positions, which a 1-2M parameter
model needs.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII (letters, digits, punctuation, space) plus newline and tab: enough to
# round-trip any prompt text the tiny path sees; anything else becomes <unk>.
CHARACTERS = tuple(dict.fromkeys(string.digits + string.ascii_letters + string.punctuation + " \n\t"))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the deterministic character tokenizer (ids: specials 0-3, then CHARACTERS)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every single character (newline included) is its own "word".
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate characters back without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
