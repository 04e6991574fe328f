"""Command-line redaction: keep a trainer's flags readable, hide its secrets.

Command lines leave the process only in traces (`vramwatch record`) and, when configured, in reports; the
advisor reads training flags from them (`--train_batch_size 4`, `--gradient_checkpointing`), so redaction
must change as little as possible. What counts as a secret:

* the value of a flag whose name ends like a credential (`--token`, `--hf_token`, `--api-key`,
  `--wandb_api_key`, `--password`, `--client_secret`, ...), in both `--flag value` and `--flag=value` forms;
* the value of a `KEY=value` argument (`HF_TOKEN=...`, Hydra's `wandb.api_key=...`) whose key reads the same;
* the password in a URL (`https://user:pass@host`), a token used as a URL's user name, and secret-looking
  query parameters (`?token=`, `&sig=`);
* well-known token formats wherever they appear (Hugging Face `hf_...`, GitHub `ghp_...`, OpenAI `sk-...`,
  Slack `xox?-...`, AWS access key ids, `Bearer ...`).

Names are judged by their *last* word, so `--max_token_length 225`, `--token_warmup_step` and
`--tokenizer_name` are training flags, not secrets. Each argument maps to exactly one argument: the length
of argv never changes, so positions stay meaningful.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "***"

# Last words of a name that make its value a secret on their own.
_SECRET_LAST = frozenset(
    {"token", "secret", "password", "passwd", "passphrase", "apikey", "credential", "credentials", "auth"}
)
# `..._token` names that are vocabulary or counts, not credentials (tokenizers, textual inversion, kohya).
_NOT_SECRET_TOKEN = frozenset(
    {
        "max",
        "min",
        "num",
        "pad",
        "bos",
        "eos",
        "unk",
        "sep",
        "cls",
        "mask",
        "special",
        "start",
        "end",
        "placeholder",
        "initializer",
        "class",
        "trigger",
        "image",
        "per",
    }
)
# `..._key` is a secret only with one of these before it (`--caption_key`, `--sort_key` are not).
_SECRET_KEY_PREV = frozenset(
    {"api", "access", "secret", "private", "wandb", "auth", "client", "license", "account", "subscription", "signing"}
)
# Words glued together (`PGPASSWORD`, ngrok's `--authtoken`) still end like a credential.
_SECRET_SUFFIXES = ("password", "passwd", "secret", "apikey", "authtoken", "accesstoken", "apitoken")
# Boolean switches that merely enable a credential found elsewhere (`--use_auth_token`, `--push_to_hub`).
_SWITCH_FIRST = frozenset({"use", "no", "push", "save"})
# Query parameters that carry signatures or keys without saying so in their last word.
_SECRET_QUERY = frozenset({"key", "sig", "signature", "x_amz_signature", "x_amz_credential", "x_goog_signature"})

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORDS = re.compile(r"[^a-z0-9]+")
_FLAG = re.compile(r"-{1,2}([A-Za-z][A-Za-z0-9_.\-]*)")
_FLAG_EQ = re.compile(r"(-{1,2}[A-Za-z][A-Za-z0-9_.\-]*=)(.+)", re.DOTALL)
_KEY_EQ = re.compile(r"([+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-]*=)(.+)", re.DOTALL)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]+:)([^/@\s]+)(@)")
_URL_TOKEN_USER = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([A-Za-z0-9_\-]{16,})(@)")
_URL_QUERY = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]+)")
_KNOWN_TOKENS = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{30,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|sk-[A-Za-z0-9]{32,}"
    r"|sk-(?:proj|ant|svcacct|admin)-[A-Za-z0-9_\-]{32,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AKIA[0-9A-Z]{16})\b"
)
_BEARER = re.compile(r"\b((?i:bearer|basic)\s+)(?!\*\*\*)\S+")


def is_secret_name(name: str) -> bool:
    """True when a flag, variable or key named `name` holds a credential (`HF_TOKEN`, `--api-key`)."""
    words = [w for w in _WORDS.split(_CAMEL.sub(r"\1_\2", name).lower()) if w]
    if not words or (len(words) > 1 and words[0] in _SWITCH_FIRST):
        return False
    last = words[-1]
    prev = words[-2] if len(words) > 1 else ""
    if last == "token":
        return prev not in _NOT_SECRET_TOKEN
    if last in _SECRET_LAST or last.endswith(_SECRET_SUFFIXES):
        return True
    return last == "key" and prev in _SECRET_KEY_PREV


def _redact_query(match: re.Match[str]) -> str:
    name = match.group(2)
    normal = _WORDS.sub("_", name.lower())
    if is_secret_name(name) or normal in _SECRET_QUERY:
        return f"{match.group(1)}{name}={MASK}"
    return match.group(0)


def _redact_text(arg: str) -> str:
    """Redact what is recognisable inside one argument whatever its position (URLs, known token formats)."""
    if "://" in arg:
        arg = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", arg)
        arg = _URL_TOKEN_USER.sub(rf"\g<1>{MASK}\g<3>", arg)
        arg = _URL_QUERY.sub(_redact_query, arg)
    arg = _KNOWN_TOKENS.sub(MASK, arg)
    return _BEARER.sub(rf"\g<1>{MASK}", arg)


def _takes_value(arg: str) -> bool:
    """True for a bare flag (`--hf_token`) whose *next* argument is its secret value."""
    m = _FLAG.fullmatch(arg)
    return m is not None and is_secret_name(m.group(1))


def _redact_one(arg: str) -> str:
    m = _FLAG_EQ.fullmatch(arg) if arg.startswith("-") else _KEY_EQ.fullmatch(arg)
    if m is not None and is_secret_name(m.group(1).strip("+~-=")):
        return m.group(1) + MASK
    return _redact_text(arg)


def redact_cmdline(argv: Sequence[str]) -> tuple[str, ...]:
    """`argv` with every secret-looking value replaced by "***"; same length, everything else untouched."""
    out: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next and not (arg.startswith("-") and len(arg) > 1):
            # The value of `--token`: a following flag means the switch had no value, so it is kept.
            out.append(MASK if arg else arg)
            secret_next = False
            continue
        out.append(_redact_one(arg))
        secret_next = _takes_value(arg)
    return tuple(out)
