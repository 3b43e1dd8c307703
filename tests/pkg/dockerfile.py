"""A small Dockerfile reader and RUN-step replayer for tests/pkg/test_dockerfile.py.

No Docker engine runs on the machines this is tested on, so the Dockerfile's steps are replayed
on the (Debian) host: every stage gets a directory standing for its root file system; WORKDIR
and COPY (from the build context or `--from=<stage>`) work inside those directories, and each
RUN step runs with `/bin/sh -c`, as Docker does, in the stage's working directory with the
stage's ENV. RUN options such as `--mount=type=cache,...` only affect caching and are dropped."""

import glob
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str
    root: Path
    workdir: str = "/"
    env: dict = field(default_factory=dict)
    instructions: list = field(default_factory=list)

    def path(self, container_path):
        """Where a path inside this stage's container lives on the host."""
        absolute = os.path.join(self.workdir, container_path)
        return self.root / os.path.normpath(absolute).lstrip("/")


def parse(text):
    """The instructions of a Dockerfile: continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def split_options(args):
    """`--opt=value ... rest` -> ({opt: value}, rest)."""
    options = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        key, _, value = option[2:].partition("=")
        options.setdefault(key, []).append(value)
        args = args.lstrip()
    return options, args


def stages(instructions, tmp):
    """Groups the instructions by FROM into stages, each with a root directory under tmp."""
    result = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            result.append(Stage(words[0], name, tmp / f"stage{len(result)}"))
            result[-1].root.mkdir(parents=True)
        else:
            assert result, f"line {ins.line}: {ins.keyword} before FROM"
            result[-1].instructions.append(ins)
    return result


def parse_env(args):
    if "=" not in args.split()[0]:
        key, _, value = args.partition(" ")
        return {key: value.strip()}
    return dict(word.split("=", 1) for word in shlex.split(args))


def copy(sources, dest, dest_is_dir):
    """Docker's COPY: a directory source copies its contents; several sources need a dir dest."""
    assert sources, "COPY source matched nothing"
    if dest_is_dir or len(sources) > 1:
        dest.mkdir(parents=True, exist_ok=True)
    for src in sources:
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)
        elif dest_is_dir or len(sources) > 1:
            shutil.copy2(src, dest / src.name)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def replay(all_stages, context, log, host_env=None, timeout=1800):
    """Runs every stage's WORKDIR, ENV, COPY and RUN in order; returns the stages. RUN steps
    get host_env (default: this process's environment) plus the stage's ENV."""
    host_env = dict(os.environ if host_env is None else host_env)
    by_name = {s.name: s for s in all_stages}
    for stage in all_stages:
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                stage.workdir = os.path.join(stage.workdir, ins.args)
                stage.path(".").mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "ENV" or (ins.keyword == "ARG" and "=" in ins.args):
                stage.env.update(parse_env(ins.args))
            elif ins.keyword == "COPY":
                options, rest = split_options(ins.args)
                words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
                *srcs, dest = words
                if "from" in options:
                    origin = by_name[options["from"][0]]
                    found = [Path(p) for s in srcs for p in sorted(glob.glob(str(origin.path(s))))]
                else:
                    found = [Path(p) for s in srcs for p in sorted(glob.glob(str(context / s)))]
                copy(found, stage.path(dest), dest.endswith("/"))
            elif ins.keyword == "RUN":
                _, command = split_options(ins.args)
                argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
                log.write(f"\n### line {ins.line}: RUN {command}\n")
                log.flush()
                r = subprocess.run(argv, cwd=stage.path("."), env={**host_env, **stage.env},
                                   stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
                assert r.returncode == 0, (f"Dockerfile line {ins.line}: RUN exited "
                                           f"{r.returncode} (log: {log.name})")
    return all_stages


def last(instructions, keyword):
    found = [i for i in instructions if i.keyword == keyword]
    return found[-1] if found else None

