using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;

namespace QLoRA.Tests.Cli;

/// <summary>The result of one run of the `qlora` tool.</summary>
internal sealed record QloraRun(int ExitCode, string Stdout, string Stderr)
{
    /// <summary>The last line of stdout parsed as a JSON object (the --json contract).</summary>
    public JsonObject Json
    {
        get
        {
            string[] lines = Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.That(lines, Is.Not.Empty, $"no stdout; stderr:\n{Stderr}");
            return JsonNode.Parse(lines[^1])!.AsObject();
        }
    }

    /// <summary>The lines of stderr that start with "qlora: error:".</summary>
    public string[] ErrorLines => Stderr.Split('\n').Where(l => l.StartsWith("qlora: error:", StringComparison.Ordinal)).ToArray();

    public override string ToString() => $"exit code {ExitCode}\n--- stdout:\n{Stdout}\n--- stderr:\n{Stderr}";
}

/// <summary>
/// Runs the real `qlora` tool as a child process (`dotnet QLoRA.Cli.dll ...` from the tool's own build output), with
/// stdout and stderr redirected (so it is not a terminal: no live progress display).
/// </summary>
internal sealed class QloraProcess : IDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _out = new(), _err = new();
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Done)> _waits = [];

    /// <summary>The tool's entry assembly: the QLoRA.Cli build of the same configuration as these tests.</summary>
    public static string ToolDll
    {
        get
        {
            // artifacts/bin/QLoRA.Tests/<config>/ -> artifacts/bin/QLoRA.Cli/<config>/QLoRA.Cli.dll
            var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            string dll = Path.Combine(here.Parent!.Parent!.FullName, "QLoRA.Cli", here.Name, "QLoRA.Cli.dll");
            if (!File.Exists(dll)) Assert.Fail($"{dll}: the qlora tool is not built (dotnet build QLoRA.sln)");
            return dll;
        }
    }

    /// <summary>The dotnet host that runs the tool.</summary>
    public static string DotnetHost => Dotnet;

    private static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } p && File.Exists(p) ? p : "dotnet";

    public QloraProcess(IEnumerable<string> args, IDictionary<string, string?>? env = null, string? workingDirectory = null)
    {
        var psi = new ProcessStartInfo(Dotnet)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8, StandardErrorEncoding = Encoding.UTF8,
            WorkingDirectory = workingDirectory ?? Path.GetTempPath(),
        };
        psi.ArgumentList.Add(ToolDll);
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        psi.Environment["OMP_NUM_THREADS"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string?>()) psi.Environment[k] = v;
        _p = new Process { StartInfo = psi };
        _p.OutputDataReceived += (_, e) => Append(_out, e.Data, false);
        _p.ErrorDataReceived += (_, e) => Append(_err, e.Data, true);
        _p.Start();
        _p.StandardInput.Close();
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
    }

    private void Append(StringBuilder sb, string? line, bool stderr)
    {
        if (line is null) return;
        lock (sb) sb.Append(line).Append('\n');
        if (!stderr) return;
        lock (_waits)
            foreach (var w in _waits.Where(w => w.Match(line)).ToList())
            {
                w.Done.TrySetResult(line);
                _waits.Remove(w);
            }
    }

    /// <summary>The process id (`dotnet QLoRA.Cli.dll` runs the tool in the host process itself).</summary>
    public int Id => _p.Id;

    /// <summary>Waits for a stderr line that matches; fails after <paramref name="timeout"/>.</summary>
    public string WaitForStderr(Func<string, bool> match, TimeSpan timeout)
    {
        var tcs = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waits)
        {
            string? seen;
            lock (_err) seen = _err.ToString().Split('\n').FirstOrDefault(match);
            if (seen is not null) return seen;
            _waits.Add((match, tcs));
        }
        if (!tcs.Task.Wait(timeout) || _p.HasExited && !tcs.Task.IsCompleted)
        {
            Kill();
            Assert.Fail($"the expected line did not appear on stderr within {timeout.TotalSeconds} s;\n{Finish(TimeSpan.FromSeconds(5))}");
        }
        return tcs.Task.Result;
    }

    [DllImport("libc", SetLastError = true, EntryPoint = "kill")]
    private static extern int SysKill(int pid, int sig);

    /// <summary>
    /// Sends SIGINT, as Ctrl-C in a terminal does, and returns what it did (for failure messages). Where the child
    /// ignores SIGINT at the OS level (SIG_IGN inherited: a background job of a non-interactive shell gets it, and
    /// .NET then installs no handler for SIGINT, so no Ctrl-C can reach the tool), sends SIGTERM instead, which the
    /// tool handles the same way (StopSignal).
    /// </summary>
    public string Interrupt()
    {
        const int SIGINT = 2, SIGTERM = 15;
        ulong ignored = IgnoredSignals(_p.Id);
        int sig = (ignored & (1UL << (SIGINT - 1))) != 0 ? SIGTERM : SIGINT;
        string note = $"sent signal {sig} to pid {_p.Id} (its SigIgn mask: {ignored:x})";
        TestContext.Out.WriteLine(note);
        Assert.That(SysKill(_p.Id, sig), Is.EqualTo(0), $"kill({sig})");
        return note;
    }

    // The SigIgn mask of a process (bit n - 1: signal n); 0 where there is no /proc.
    private static ulong IgnoredSignals(int pid)
    {
        string path = $"/proc/{pid}/status";
        if (!File.Exists(path)) return 0;
        string? line = File.ReadLines(path).FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return line is null ? 0 : Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16);
    }

    private void Kill()
    {
        try
        {
            if (!_p.HasExited) _p.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }
    }

    /// <summary>Waits for the exit (killing the process and failing after <paramref name="timeout"/>).</summary>
    public QloraRun Finish(TimeSpan timeout)
    {
        if (!_p.WaitForExit(timeout))
        {
            Kill();
            _p.WaitForExit();
            Assert.Fail($"qlora did not finish within {timeout.TotalSeconds} s:\n{Snapshot(-1)}");
        }
        _p.WaitForExit();   // drains the redirected streams
        return Snapshot(_p.ExitCode);
    }

    private QloraRun Snapshot(int code)
    {
        lock (_out) lock (_err) return new QloraRun(code, _out.ToString(), _err.ToString());
    }

    /// <summary>Runs the tool to completion.</summary>
    public static QloraRun Run(IEnumerable<string> args, IDictionary<string, string?>? env = null, int timeoutSeconds = 240)
    {
        using var p = new QloraProcess(args, env);
        var r = p.Finish(TimeSpan.FromSeconds(timeoutSeconds));
        TestContext.Out.WriteLine($"$ qlora {string.Join(' ', args)}\n  -> exit {r.ExitCode}");
        return r;
    }

    public void Dispose()
    {
        Kill();
        _p.Dispose();
    }
}
