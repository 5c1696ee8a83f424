"""Request checks: the texts of a request as the model takes them, or an :class:`ApiError` naming the field.

Wrong or missing fields are 422 (empty lists and empty texts included, a text of only control, zero-width or
invalid characters is empty), too many texts or too long ones 413.  A lone UTF-16 surrogate (JSON's ``"\\ud800"``)
is not text: it becomes U+FFFD (:func:`qingbert.data.text.repair_text`) and the cleaning drops it.  With
``/encode``'s ``"is_tokenized": true`` each text is a list of tokens; they are joined back into a text (WordPiece
``##`` pieces glued to the token before, others separated by a space) and tokenised again, so the model tokenizer's
own tokens of the cleaned text (``qingbert.data.text.clean_text``, which every model input goes through) give
exactly the vectors of the untokenised text; the character limit counts the tokens' characters.
"""

from qingbert.data.text import is_blank, repair_text, split_pair
from qingbert.serve.config import ApiError, ServeConfig


def _json_type(v) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _check_list(items, field: str, cfg: ServeConfig) -> list:
    if not isinstance(items, list):
        raise ApiError(422, f"'{field}' must be an array, got {_json_type(items)}", param=field)
    if not items:
        raise ApiError(422, f"'{field}' is empty: send at least one text", param=field)
    if len(items) > cfg.max_texts:
        raise ApiError(413, f"too many texts in '{field}': {len(items)} (the limit is max_texts = {cfg.max_texts} "
                            "per request)", "limit_exceeded", field)
    return items


def check_text(t, field: str, cfg: ServeConfig) -> str:
    if not isinstance(t, str):
        raise ApiError(422, f"'{field}' must be a string, got {_json_type(t)}", param=field)
    if len(t) > cfg.max_chars:
        raise ApiError(413, f"'{field}' has {len(t)} characters (the limit is max_chars = {cfg.max_chars})",
                       "limit_exceeded", field)
    if is_blank(t):
        raise ApiError(422, f"'{field}' is an empty text (nothing is left once control, zero-width and invalid "
                            "characters are taken out)", param=field)
    return repair_text(t)


def check_texts(items, field: str, cfg: ServeConfig) -> list[str]:
    """``items`` as a list of non-empty texts within the limits, else an :class:`ApiError` naming the field."""
    return [check_text(t, f"{field}[{i}]", cfg) for i, t in enumerate(_check_list(items, field, cfg))]


def detokenize(tokens: list[str]) -> str:
    """Tokens back into a text: ``##`` pieces glued to the token before, the others separated by a space (the
    BERT pre-tokenizer splits Chinese characters and punctuation again, so the tokens come back the same)."""
    out = ""
    for t in tokens:
        out = out + t[2:] if t.startswith("##") and out else (f"{out} {t}" if out else t)
    return out


def check_tokenized(items, field: str, cfg: ServeConfig) -> list[str]:
    """``is_tokenized`` input: a list of token lists -> texts."""
    texts = []
    for i, toks in enumerate(_check_list(items, field, cfg)):
        where = f"{field}[{i}]"
        if not isinstance(toks, list):
            raise ApiError(422, f"'{where}' must be an array of tokens (is_tokenized is true), got {_json_type(toks)}",
                           param=where)
        if not toks:
            raise ApiError(422, f"'{where}' is an empty token list", param=where)
        for j, tok in enumerate(toks):
            if not isinstance(tok, str) or is_blank(tok):
                raise ApiError(422, f"'{where}[{j}]' must be a non-empty token string, got {_json_type(tok)}",
                               param=f"{where}[{j}]")
        chars = sum(len(tok) for tok in toks)
        if chars > cfg.max_chars:
            raise ApiError(413, f"'{where}' has {chars} characters in its tokens (the limit is max_chars = "
                                f"{cfg.max_chars})", "limit_exceeded", where)
        texts.append(repair_text(detokenize(toks)))
    return texts


def check_predict_inputs(items, kind: str, cfg: ServeConfig) -> list:
    """Inputs of ``/classify`` for a model of ``kind``, in the forms
    :meth:`qingbert.deploy.inference.Model.predict` takes."""
    out = []
    for i, x in enumerate(_check_list(items, "texts", cfg)):
        where = f"texts[{i}]"
        if kind == "mrc":
            if isinstance(x, list) and len(x) == 2:
                x = {"question": x[0], "context": x[1]}
            if not isinstance(x, dict) or set(x) < {"question", "context"}:
                raise ApiError(422, f"'{where}': an MRC model takes {{\"question\": ..., \"context\": ...}} objects "
                                    "or [question, context] pairs", param=where)
            out.append({"question": check_text(x["question"], f"{where}.question", cfg),
                        "context": check_text(x["context"], f"{where}.context", cfg)})
        elif kind == "pair":
            pair = split_pair(x) if isinstance(x, str) else None
            if pair is not None:
                x = list(pair)
            if not isinstance(x, list) or len(x) != 2:
                raise ApiError(422, f"'{where}': a sentence-pair model takes [text_a, text_b] pairs or "
                                    "'text_a ||| text_b' strings", param=where)
            out.append((check_text(x[0], f"{where}[0]", cfg), check_text(x[1], f"{where}[1]", cfg)))
        else:
            out.append(check_text(x, where, cfg))
    return out


def _param(loc) -> str:
    """A pydantic error location (without ``body``) as ``texts[2].question``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(errors: list[dict]) -> ApiError:
    """Our error for FastAPI's :class:`RequestValidationError` list: the first problem, naming its field."""
    if not errors:
        return ApiError(422, "invalid request")
    e = errors[0]
    loc = tuple(e.get("loc") or ())
    where = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    kind = e.get("type", "")
    if kind == "json_invalid":
        pos = where[0] if where else "?"
        return ApiError(400, f"malformed JSON body: {(e.get('ctx') or {}).get('error', 'decode error')} at "
                             f"position {pos}", "invalid_json")
    if not where:
        if kind == "missing":
            return ApiError(400, "the request body is empty: send a JSON object", "invalid_json")
        return ApiError(422, f"the request body must be a JSON object, got {_json_type(e.get('input'))}",
                        param="body")
    param = _param(where)
    if kind == "missing":
        return ApiError(422, f"field '{param}' is required", param=param)
    if kind == "extra_forbidden":
        return ApiError(422, f"unknown field '{param}'", param=param)
    got = f", got {_json_type(e.get('input'))}" if kind.endswith("_type") else ""
    return ApiError(422, f"field '{param}': {e.get('msg', 'invalid value')}{got}", param=param)


__all__ = ["check_predict_inputs", "check_text", "check_texts", "check_tokenized", "detokenize", "validation_error"]
