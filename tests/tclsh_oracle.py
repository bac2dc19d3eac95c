"""One long-lived ``tclsh`` that answers list questions, so tests can batch thousands of cases.

Text crosses the pipe hex-encoded as UTF-8, so no quoting of ours can blur what Tcl saw.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence

# Requests and answers are one line each:
#   D <hex text>          -> "O <count> <hex,hex,...>" (Tcl's elements) or "E" (Tcl refuses)
#   L <hex,hex,...>       -> "O 1 <hex>" (Tcl's own `list` of those words)
# A word list is written as count + comma-joined hex, so empty words survive.
_SCRIPT = r"""
fconfigure stdin -translation binary -buffering line
fconfigure stdout -translation binary -buffering line
proc hx {s} { binary encode hex [encoding convertto utf-8 $s] }
proc un {h} { encoding convertfrom utf-8 [binary decode hex $h] }
while {[gets stdin line] >= 0} {
    lassign [split $line " "] op n data
    if {$op eq "D"} {
        set text [un $data]
        if {[catch {llength $text} count]} {
            puts "E"
            continue
        }
        set out {}
        for {set i 0} {$i < $count} {incr i} { lappend out [hx [lindex $text $i]] }
        puts "O $count [join $out ,]"
    } elseif {$op eq "L"} {
        set words {}
        # [split "" ,] is empty, so a single (possibly empty) word is taken whole.
        # (Not [expr {... ? ...}]: expr would read hex such as 0061 as a number.)
        if {$n == 1} { set parts [list $data] } else { set parts [split $data ,] }
        if {$n > 0} { foreach h $parts { lappend words [un $h] } }
        puts "O 1 [hx [list {*}$words]]"
    } else {
        puts "?"
    }
}
"""


def tclsh_path() -> str | None:
    return shutil.which("tclsh") or shutil.which("tclsh8.6")


def _unhex(h: str) -> str:
    # surrogatepass: Tcl writes a lone surrogate made by a \uD800 escape as CESU-8 bytes.
    return bytes.fromhex(h).decode("utf-8", "surrogatepass")


def _words_field(words: Sequence[str]) -> str:
    return f"{len(words)} " + ",".join(w.encode("utf-8").hex() for w in words)


class Tclsh:
    """A running ``tclsh`` to ask, in batches, how Tcl 8.6 reads and writes lists."""

    def __init__(self, path: str) -> None:
        # The script goes in a file: tclsh reading it from stdin would share that channel
        # with the requests.
        self._dir = tempfile.mkdtemp(prefix="tclsh-oracle-")
        script = os.path.join(self._dir, "oracle.tcl")
        with open(script, "w", encoding="ascii") as f:
            f.write(_SCRIPT)
        self._proc = subprocess.Popen(
            [path, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="ascii",
            bufsize=1,
        )

    def close(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._proc.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _ask(self, lines: list[str]) -> list[str]:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        stdin = proc.stdin

        # A writer thread keeps both pipes moving, so a large batch cannot deadlock.
        def feed() -> None:
            for line in lines:
                stdin.write(line + "\n")
            stdin.flush()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        answers = []
        for _ in lines:
            answer = proc.stdout.readline()
            if not answer:
                raise RuntimeError("tclsh oracle exited")
            answers.append(answer.rstrip("\n"))
        writer.join()
        return answers

    def split(self, texts: Sequence[str]) -> list[list[str] | None]:
        """Tcl's elements of each text, or None where Tcl refuses it as a list."""
        out: list[list[str] | None] = []
        for answer in self._ask(["D 1 " + t.encode("utf-8").hex() for t in texts]):
            if answer == "E":
                out.append(None)
                continue
            _, count, data = [*answer.split(" "), ""][:3]
            out.append([_unhex(h) for h in data.split(",")] if int(count) else [])
        return out

    def make_list(self, word_lists: Sequence[Sequence[str]]) -> list[str]:
        """Tcl's own ``list`` of each word sequence."""
        answers = self._ask(["L " + _words_field(words) for words in word_lists])
        return [_unhex(a.split(" ")[2]) for a in answers]
