using System.Runtime.InteropServices;

using TorchSharp;

namespace QLoRA;

/// <summary>What <see cref="TorchRuntime.EnsureLoaded"/> found and configured.</summary>
/// <param name="LibTorchVersion">libtorch's version string (e.g. "2.10.0+cpu").</param>
/// <param name="NativeLibraryPath">The libLibTorchSharp file that was loaded (null where not checked: non-Linux).</param>
/// <param name="IntraOpThreads">torch's intra-op thread pool size.</param>
/// <param name="InterOpThreads">torch's inter-op thread pool size.</param>
/// <param name="OmpWaitPolicy">OMP_WAIT_POLICY as the native environment had it when libtorch loaded.</param>
public sealed record TorchRuntimeInfo(
    string LibTorchVersion, string? NativeLibraryPath, int IntraOpThreads, int InterOpThreads, string? OmpWaitPolicy);

/// <summary>TorchSharp could not be loaded; the message says what is wrong and how to fix it.</summary>
public sealed class TorchRuntimeException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TorchRuntimeException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// Loads TorchSharp's native backend once, configured for this project: OMP_WAIT_POLICY=PASSIVE in the
/// native environment before libtorch's OpenMP runtime starts (idle OpenMP threads otherwise spin and fight
/// the native core's own pool), explicit intra-/inter-op thread counts, and a precise error when the
/// native library cannot load (instead of TorchSharp's "doesn't contain a reference to libtorch-cpu-linux-x64").
/// Call it before the first torch call of a process; later calls return the first call's result.
/// </summary>
public static class TorchRuntime
{
    private const string LibName = "libLibTorchSharp.so";
    private static readonly object Gate = new();
    private static TorchRuntimeInfo? s_info;

    /// <summary>Loads and configures libtorch (idempotent, thread-safe).</summary>
    /// <param name="intraOpThreads">torch's intra-op threads; 0 = one per core.</param>
    /// <param name="interOpThreads">torch's inter-op threads (1 unless the caller runs torch graphs concurrently).</param>
    /// <exception cref="TorchRuntimeException">The native library is missing or cannot load here.</exception>
    public static TorchRuntimeInfo EnsureLoaded(int intraOpThreads = 0, int interOpThreads = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(intraOpThreads);
        ArgumentOutOfRangeException.ThrowIfLessThan(interOpThreads, 1);
        lock (Gate)
        {
            if (s_info is not null) return s_info;
            string? omp = null;
            string? path = null;
            if (OperatingSystem.IsLinux())
            {
                omp = SetNativeEnvironmentDefault("OMP_WAIT_POLICY", "PASSIVE");
                path = PreloadOnLinux();
            }
            try
            {
                torch.InitializeDeviceType(DeviceType.CPU);
            }
            catch (Exception e) when (e is TypeInitializationException or NotSupportedException or DllNotFoundException)
            {
                throw new TorchRuntimeException(
                    "TorchSharp's native backend failed to initialize" + (path is null ? "" : $" ({path})") + ": " +
                    Innermost(e).Message.Split('\n')[0] + " " + FixHint, e);
            }
            int intra = intraOpThreads == 0 ? Environment.ProcessorCount : intraOpThreads;
            torch.set_num_threads(intra);
            try
            {
                torch.set_num_interop_threads(interOpThreads);
            }
            catch (Exception e) when (e is ExternalException or InvalidOperationException)
            {
                // libtorch allows this once, before any inter-op work; some other code already ran torch.
            }
            s_info = new TorchRuntimeInfo(torch.__version__, path, torch.get_num_threads(), torch.get_num_interop_threads(), omp);
            return s_info;
        }
    }

    private const string FixHint =
        "A QLoRA application needs the packages TorchSharp 0.107.0 and libtorch-cpu-linux-x64 2.10.0 (the QLoRA package " +
        "brings both) and a build that ran QLoRA's MSBuild target QLoRAPatchTorchSharpOutput (it ships in the QLoRA " +
        "package's buildTransitive folder; `dotnet build` runs it).";

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e;
    }

    // dlopen()s libLibTorchSharp.so from where TorchSharp will look for it, so that a failure is diagnosed
    // from the loader's own message. The handle stays open: TorchSharp's later load gets the same library.
    private static string PreloadOnLinux()
    {
        string rid = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? "linux-arm64" : "linux-x64";
        var dirs = new List<string>();
        foreach (var baseDir in new[] { Path.GetDirectoryName(typeof(torch).Assembly.Location), AppContext.BaseDirectory })
        {
            if (string.IsNullOrEmpty(baseDir)) continue;
            foreach (var d in new[] { baseDir, Path.Combine(baseDir, "runtimes", rid, "native") })
                if (!dirs.Contains(d)) dirs.Add(d);
        }
        string? path = dirs.Select(d => Path.Combine(d, LibName)).FirstOrDefault(File.Exists);
        if (path is null)
            throw new TorchRuntimeException(
                $"TorchSharp's native library {LibName} is not in the application ({string.Join(", ", dirs)}). " +
                (rid == "linux-x64"
                    ? "Reference the TorchSharp package (0.107.0); the QLoRA package does."
                    : $"TorchSharp 0.107 ships no native library for {rid}: training runs on linux-x64 (and win-x64, osx-arm64)."));
        string dir = Path.GetDirectoryName(path)!;
        if (!File.Exists(Path.Combine(dir, "libtorch_cpu.so")))
            throw new TorchRuntimeException(
                $"libtorch is missing: {dir} has {LibName} but not libtorch_cpu.so. Add the libtorch runtime package: " +
                "<PackageReference Include=\"libtorch-cpu-linux-x64\" Version=\"2.10.0\" /> (the QLoRA package references it).");
        try
        {
            NativeLibrary.Load(path);
        }
        catch (DllNotFoundException e)
        {
            string why = e.Message;
            int glibcxx = why.IndexOf("GLIBCXX_", StringComparison.Ordinal);
            if (glibcxx >= 0 && why.Contains("not found", StringComparison.Ordinal))
            {
                string version = new string(why.Skip(glibcxx).TakeWhile(c => c is not ('\'' or '`' or ' ')).ToArray());
                throw new TorchRuntimeException(
                    $"{path} needs {version} from libstdc++.so.6, which this system's libstdc++ does not have " +
                    $"(the loader said: {why.Trim()}). The requirement is harmless to drop: build the application with " +
                    "the QLoRA package referenced (its MSBuild target QLoRAPatchTorchSharpOutput marks it weak in the " +
                    "output copy), or check that <QLoRAPatchTorchSharp> is not false; alternatively install a libstdc++ " +
                    "from GCC 13 or newer.", e);
            }
            if (why.Contains("libtorch", StringComparison.Ordinal) || why.Contains("libc10", StringComparison.Ordinal))
                throw new TorchRuntimeException(
                    $"{path} cannot find libtorch (the loader said: {why.Trim()}). Add the libtorch runtime package: " +
                    "<PackageReference Include=\"libtorch-cpu-linux-x64\" Version=\"2.10.0\" />.", e);
            throw new TorchRuntimeException($"{path} could not be loaded: {why.Trim()}", e);
        }
        return path;
    }

    [DllImport("libc", EntryPoint = "setenv", SetLastError = true)]
    private static extern int setenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    [DllImport("libc", EntryPoint = "getenv")]
    private static extern IntPtr getenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name);

    // .NET's Environment.SetEnvironmentVariable does not reach the native environment on Unix, and native
    // libraries (libgomp) read that one. Keeps a value the user set. Returns the value in effect.
    private static string? SetNativeEnvironmentDefault(string name, string value)
    {
        IntPtr existing = getenv(name);
        if (existing != IntPtr.Zero) return Marshal.PtrToStringUTF8(existing);
        if (setenv(name, value, 0) != 0)
            throw new TorchRuntimeException($"setenv({name}) failed with errno {Marshal.GetLastPInvokeError()}");
        Environment.SetEnvironmentVariable(name, value);
        return value;
    }
}
