"""The project's files import each other without a circle, imports inside functions included: a
circle hides the order in which a reader should meet the files, and breaks as soon as one of its
imports moves to the top. An import inside a function is allowed where start-up order needs it (a
script sets up its Ctrl-C line before torch loads), and then says so in a comment."""
import ast
import os

from helpers import ROOT

SKIP = {'tests', '.git', 'labs/runs'}


def project_files():
    """{module name: path} of every .py file of the project (tests and run folders left out)."""
    found = {}
    for where, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(where, ROOT)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in SKIP
                   and not d.startswith(('.', '__', 'out'))]
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(where, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                found[module.removesuffix('.__init__')] = path
    return found


def imports(path, modules):
    """[(module imported, line, inside a function?)] for the project modules one file imports. A
    bare name that is no top-level module is looked up beside the file (data/*/prepare.py puts data/
    on sys.path to import prepare_common)."""
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    here = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, '.')
    parents = [here.rsplit('.', k)[0] for k in range(here.count('.') + 1)] if here != '.' else []
    inside = {id(n) for f in ast.walk(tree)
              if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}

    def resolve(name):
        for candidate in [name] + [f'{p}.{name}' for p in parents]:
            if candidate in modules:
                return candidate
        return None
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f'{node.module}.{a.name}' if resolve(f'{node.module}.{a.name}')
                     else node.module
                     for a in node.names]
        for name in names:
            target = resolve(name)
            if target:
                out.append((target, node.lineno, id(node) in inside))
    return out


def find_cycle(graph):
    """One circle of the graph {module: {modules it imports}} as a list, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 'done'
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def graph_of_project():
    modules = project_files()
    return modules, {m: {t for t, _, _ in imports(p, modules) if t != m}
                     for m, p in modules.items()}


def test_no_import_circle_among_the_project_files():
    modules, graph = graph_of_project()
    assert {'model', 'bitune', 'train', 'configurator', 'utils.runtime',
            'labs.labs'} <= set(modules)
    assert 'adapters' in graph['model']  # the walk does see imports
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    (tmp_path / 'x.py').write_text('import os\n\ndef f():\n    import model  # start-up order\n')
    assert imports(str(tmp_path / 'x.py'), {'model': ''}) == [('model', 4, True)]


def test_an_import_inside_a_function_says_why():
    modules = project_files()
    silent = []
    for module, path in modules.items():
        lines = open(path, encoding='utf-8').read().splitlines()
        for target, line, inside in imports(path, modules):
            if (inside and '#' not in lines[line - 1]
                    and not lines[line - 2].strip().startswith('#')):
                silent.append(f'{module}:{line} imports {target}')
    assert silent == []
