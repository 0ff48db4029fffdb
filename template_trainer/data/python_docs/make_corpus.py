"""Rebuilds `python_docs.txt.gz` from the Python documentation's sources.

Not needed to train: the corpus ships with the repository. This is how it
was made, so it can be checked or remade. The sources are the reST files a
Sphinx build of the Python 3.11 documentation keeps under `_sources/`, as in
Debian's `python3.11-doc` package:

  apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb doc
  python template_trainer/data/python_docs/make_corpus.py \
      doc/usr/share/doc/python3.11/html/_sources

The markup is thinned to read as plain text (roles such as
``:func:`len``` become ``len``; index entries, labels and comments go), the
text is folded to ASCII, and the documents are written in a fixed order.
"""

import gzip
import os
import re
import sys
import unicodedata

# The prose-heavy parts of the documentation, in this order.
SECTIONS = ("tutorial", "howto", "faq", "reference")
OUT = os.path.join(os.path.dirname(__file__), "python_docs.txt.gz")

_ROLE = re.compile(r":[\w:+-]+:`([^`]*)`")
_TARGET = re.compile(r"^(.*?)\s*<[^<>]*>$", re.S)
_DROPPED_DIRECTIVES = re.compile(
    r"^\.\. (index|highlight|sectionauthor|moduleauthor|toctree|testsetup|"
    r"testcleanup|only|raw|include|versionadded|versionchanged|"
    r"deprecated|impl-detail|tabularcolumns)::"
)


def _role_text(match):
    text = match.group(1).lstrip("!~")
    target = _TARGET.match(text)
    return target.group(1) if target else text


def clean(text):
    """`text` (reST) with its markup thinned to plain text, in ASCII."""
    lines, skipping = [], False
    for line in text.splitlines():
        if skipping:
            if line.startswith((" ", "\t")) or not line.strip():
                continue
            skipping = False
        if re.match(r"^\.\. _[^:]*:\s*$", line):  # a label
            continue
        if _DROPPED_DIRECTIVES.match(line) or re.match(r"^\.\.(\s|$)", line):
            # Directives without prose, and comments, with their bodies;
            # `.. note::` and the like keep theirs.
            if not re.match(r"^\.\. [\w-]+::", line) or (
                _DROPPED_DIRECTIVES.match(line)
            ):
                skipping = True
                continue
        lines.append(_ROLE.sub(_role_text, line).rstrip())
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = unicodedata.normalize("NFKD", text.replace("\t", "    "))
    return text.encode("ascii", "ignore").decode("ascii").strip() + "\n"


def documents(sources):
    """`(path, text)` of each document of `SECTIONS`, in a fixed order."""
    for section in SECTIONS:
        root = os.path.join(sources, section)
        for directory, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name.endswith(".rst.txt"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, sources), clean(f.read())


def main(sources):
    texts = [text for _, text in documents(sources)]
    corpus = "\n\n".join(texts)
    # mtime=0: the same sources give the same bytes.
    with gzip.GzipFile(OUT, "wb", compresslevel=9, mtime=0) as f:
        f.write(corpus.encode("ascii"))
    print(f"{len(texts)} documents, {len(corpus):,} characters -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
