using QLoRA.BindingGen;

// BindingGen: native/include/qlora.h -> C# bindings, native ABI layout table, binding tests.
//   dotnet run --project tools/BindingGen [-- --check] [--repo DIR] [--clang PATH]
// Exit codes: 0 up to date / written, 1 stale (--check), 2 error (header, clang or usage).
bool check = false;
string? repo = null, clang = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--check": check = true; break;
        case "--repo" when i + 1 < args.Length: repo = args[++i]; break;
        case "--clang" when i + 1 < args.Length: clang = args[++i]; break;
        case "-h" or "--help":
            Console.WriteLine("usage: BindingGen [--check] [--repo DIR] [--clang PATH]");
            Console.WriteLine("  regenerates the bindings from native/include/qlora.h; --check only reports stale files");
            return 0;
        default:
            Console.Error.WriteLine($"BindingGen: unknown argument '{args[i]}' (try --help)");
            return 2;
    }
}

repo ??= FindRepoRoot(Environment.CurrentDirectory) ?? FindRepoRoot(AppContext.BaseDirectory);
if (repo is null)
{
    Console.Error.WriteLine("BindingGen: cannot find the repository root (a folder with native/include/qlora.h); pass --repo DIR");
    return 2;
}
var options = new GeneratorOptions(Path.GetFullPath(repo));
if (clang is not null) options = options with { Clang = clang };

try
{
    IReadOnlyList<GeneratedFile> files = Generator.Generate(options);
    if (check)
    {
        IReadOnlyList<StaleFile> stale = Generator.Check(options, files);
        if (stale.Count == 0)
        {
            Console.WriteLine($"BindingGen: {files.Count} generated files are up to date with {options.Header}");
            return 0;
        }
        Console.Error.WriteLine($"BindingGen: the generated bindings are stale ({options.Header} changed?):");
        foreach (StaleFile s in stale) Console.Error.WriteLine($"  {s.Path}: {s.Reason}");
        Console.Error.WriteLine($"Run from the repository root: {Generator.Command}");
        return 1;
    }
    IReadOnlyList<string> changed = Generator.Write(options, files);
    foreach (string path in changed) Console.WriteLine($"  wrote {path}");
    Console.WriteLine($"BindingGen: {changed.Count} of {files.Count} generated files changed");
    return 0;
}
catch (BindingGenException e)
{
    Console.Error.WriteLine($"BindingGen: {e.Message}");
    return 2;
}

static string? FindRepoRoot(string start)
{
    for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "native", "include", "qlora.h"))) return dir.FullName;
    return null;
}
