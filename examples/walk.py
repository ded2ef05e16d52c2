"""A recursive directory walk that pushes what it finds from any depth.

`itemize` is passed down the recursion: no re-yield at every level, as an
async generator would need (`async for x in walk(sub): yield x`).

Prints:
tree/a.txt
tree/sub/b.txt
tree/sub/deeper/c.txt
3 files
"""

import os
import tempfile

import trio

from channel import Itemize, producer


async def walk(path: str, itemize: Itemize[str]) -> None:
    for entry in sorted(os.scandir(path), key=lambda entry: entry.name):
        if entry.is_dir():
            await walk(entry.path, itemize)  # recursion: itemize goes down with it
        else:
            await itemize(entry.path)


@producer
async def files(itemize: Itemize[str], root: str) -> None:
    await walk(root, itemize)


def make_tree(top: str) -> None:
    for name in ("tree/a.txt", "tree/sub/b.txt", "tree/sub/deeper/c.txt"):
        os.makedirs(os.path.dirname(os.path.join(top, name)), exist_ok=True)
        with open(os.path.join(top, name), "w"):
            pass


async def main() -> None:
    with tempfile.TemporaryDirectory() as top:
        make_tree(top)
        count = 0
        async with files(os.path.join(top, "tree")) as found:
            async for path in found:
                print(path.removeprefix(top + os.sep))
                count += 1
        print(f"{count} files")


if __name__ == "__main__":
    trio.run(main)
