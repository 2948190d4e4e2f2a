using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

using QLoRA.Models;
using QLoRA.Native;

using TorchSharp;

namespace QLoRA.Reports;

/// <summary>
/// What a benchmark ran on: CPU model, cores and the threads used, the instruction set the native kernels use,
/// RAM, OS, .NET, TorchSharp and libtorch versions, the source commit, and the load average (the machines
/// this project runs on are shared: a figure means little without it).
/// </summary>
public sealed record MachineInfo
{
    /// <summary>CPU model name (/proc/cpuinfo), with family/model/stepping where the name is generic.</summary>
    public required string Cpu { get; init; }

    /// <summary>Logical processors the OS gives this process.</summary>
    public required int LogicalCores { get; init; }

    /// <summary>Native core (fused 4-bit kernels, optimizer) threads.</summary>
    public required int NativeThreads { get; init; }

    /// <summary>libtorch intra-op threads.</summary>
    public required int TorchThreads { get; init; }

    /// <summary>The instruction set level the native kernels use (e.g. "avx512_bf16").</summary>
    public required string Isa { get; init; }

    /// <summary>Physical memory in bytes (MemTotal).</summary>
    public required long RamBytes { get; init; }

    /// <summary>OS name and kernel.</summary>
    public required string Os { get; init; }

    /// <summary>.NET runtime.</summary>
    public required string DotNet { get; init; }

    /// <summary>TorchSharp assembly version.</summary>
    public required string TorchSharp { get; init; }

    /// <summary>libtorch version.</summary>
    public required string LibTorch { get; init; }

    /// <summary>Native core version.</summary>
    public required string NativeVersion { get; init; }

    /// <summary>OMP_WAIT_POLICY as libtorch saw it.</summary>
    public required string? OmpWaitPolicy { get; init; }

    /// <summary>Source commit (git, "+dirty" with uncommitted changes) or the build's informational version.</summary>
    public required string Commit { get; init; }

    /// <summary>1-minute load average when the info was taken ("n/a" off Linux).</summary>
    public required string LoadAverage { get; init; }

    /// <summary>UTC time the info was taken.</summary>
    public required DateTime TimeUtc { get; init; }

    /// <summary>Collects the information (loads libtorch and the native core).</summary>
    public static MachineInfo Collect()
    {
        var torchInfo = TorchRuntime.EnsureLoaded();
        var ctx = NativeRuntime.Context;
        return new MachineInfo
        {
            Cpu = CpuName(),
            LogicalCores = Environment.ProcessorCount,
            NativeThreads = ctx.Threads,
            TorchThreads = torch.get_num_threads(),
            Isa = QLoraContext.IsaName(ctx.Isa),
            RamBytes = MemTotal(),
            Os = OsName(),
            DotNet = RuntimeInformation.FrameworkDescription,
            TorchSharp = typeof(torch).Assembly.GetName().Version?.ToString() ?? "?",
            LibTorch = torchInfo.LibTorchVersion,
            NativeVersion = QLoraContext.NativeVersion,
            OmpWaitPolicy = torchInfo.OmpWaitPolicy,
            Commit = SourceCommit(),
            LoadAverage = LoadAverageNow(),
            TimeUtc = DateTime.UtcNow,
        };
    }

    /// <summary>The 1-minute load average now ("n/a" without /proc/loadavg).</summary>
    public static string LoadAverageNow() =>
        File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";

    /// <summary>The markdown lines of the report header.</summary>
    public string ToMarkdown() =>
        $"Machine: {Cpu}, {LogicalCores} logical cores ({NativeThreads} native + {TorchThreads} torch threads, used in turn), " +
        $"ISA {Isa}, {RamBytes / (1024.0 * 1024 * 1024):F1} GiB RAM, {Os}; {DotNet}, TorchSharp {TorchSharp}, libtorch {LibTorch}, " +
        $"native core {NativeVersion}, OMP_WAIT_POLICY={OmpWaitPolicy ?? "unset"}; commit {Commit}; " +
        $"{TimeUtc.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)} UTC, load average {LoadAverage} at the start.";

    /// <summary>The JSON form.</summary>
    public JsonObject ToJson() => new()
    {
        ["cpu"] = Cpu,
        ["logical_cores"] = LogicalCores,
        ["native_threads"] = NativeThreads,
        ["torch_threads"] = TorchThreads,
        ["isa"] = Isa,
        ["ram_bytes"] = RamBytes,
        ["os"] = Os,
        ["dotnet"] = DotNet,
        ["torchsharp"] = TorchSharp,
        ["libtorch"] = LibTorch,
        ["native_version"] = NativeVersion,
        ["omp_wait_policy"] = OmpWaitPolicy,
        ["commit"] = Commit,
        ["load_average"] = LoadAverage,
        ["time_utc"] = TimeUtc.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
    };

    private static string CpuName()
    {
        if (!File.Exists("/proc/cpuinfo")) return RuntimeInformation.ProcessArchitecture.ToString();
        string? name = null, family = null, model = null, stepping = null;
        foreach (string line in File.ReadLines("/proc/cpuinfo"))
        {
            int colon = line.IndexOf(':');
            if (colon < 0) continue;
            string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
            switch (key)
            {
                case "model name": name ??= value; break;
                case "cpu family": family ??= value; break;
                case "model": model ??= value; break;
                case "stepping": stepping ??= value; break;
            }
            if (line.Length == 0 && name is not null) break;
        }
        name ??= RuntimeInformation.ProcessArchitecture.ToString();
        return family is null ? name : $"{name} (family {family}, model {model}, stepping {stepping})";
    }

    /// <summary>
    /// Bytes of the largest (last-level) CPU cache Linux reports under
    /// /sys/devices/system/cpu/cpu0/cache, or 32 MiB where it reports none.
    /// Benchmarks that must read from memory size their data from it: caches
    /// range from 32 MiB (Zen 4/5 VMs) to 300 MiB (a Xeon VM with AMX).
    /// </summary>
    public static long LastLevelCacheBytes()
    {
        long best = 0;
        const string dir = "/sys/devices/system/cpu/cpu0/cache";
        if (Directory.Exists(dir))
            foreach (string index in Directory.GetDirectories(dir, "index*"))
            {
                string size = Path.Combine(index, "size");
                if (File.Exists(size) && ParseCacheSize(File.ReadAllText(size)) is long b) best = Math.Max(best, b);
            }
        return best > 0 ? best : 32L << 20;
    }

    /// <summary>A sysfs cache size ("48K", "2048K", "300M", "1024") in bytes; null if it is not one.</summary>
    public static long? ParseCacheSize(string text)
    {
        string s = text.Trim();
        long unit = 1;
        if (s.EndsWith('K')) unit = 1L << 10;
        else if (s.EndsWith('M')) unit = 1L << 20;
        else if (s.EndsWith('G')) unit = 1L << 30;
        if (unit != 1) s = s[..^1];
        return long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long n) && n > 0 && n <= (1L << 40) / unit
            ? n * unit
            : null;
    }

    private static long MemTotal()
    {
        if (!File.Exists("/proc/meminfo")) return 0;
        foreach (string line in File.ReadLines("/proc/meminfo"))
            if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                return long.Parse(line["MemTotal:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        return 0;
    }

    private static string OsName()
    {
        string? pretty = null;
        if (File.Exists("/etc/os-release"))
            foreach (string line in File.ReadLines("/etc/os-release"))
                if (line.StartsWith("PRETTY_NAME=", StringComparison.Ordinal))
                    pretty = line["PRETTY_NAME=".Length..].Trim('"');
        return $"{pretty ?? RuntimeInformation.OSDescription} (kernel {Environment.OSVersion.Version})";
    }

    /// <summary>
    /// The commit of the repository the process runs in (git rev-parse HEAD in the current directory, "+dirty" when
    /// the tree has changes), else the source revision the assembly was built from.
    /// </summary>
    public static string SourceCommit()
    {
        string? head = Git("rev-parse --short=12 HEAD");
        if (head is not null)
            return Git("status --porcelain --untracked-files=no") is { Length: > 0 } ? head + "+dirty" : head;
        string? info = typeof(MachineInfo).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        int plus = info?.IndexOf('+') ?? -1;
        return plus >= 0 ? info![(plus + 1)..] : "unknown";
    }

    private static string? Git(string args)
    {
        try
        {
            var psi = new ProcessStartInfo("git", args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            using var p = Process.Start(psi);
            if (p is null) return null;
            string output = p.StandardOutput.ReadToEnd().Trim();
            p.StandardError.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;   // no git
        }
    }
}
