using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>Which build of the native library to load.</summary>
public enum QLoraNativeBuild
{
    /// <summary>The CUDA build if it is installed and loads (its CUDA runtime is present), else the CPU build.</summary>
    Auto = 0,

    /// <summary>The CPU-only build (<c>libqlora</c>, package QLoRA.Runtime.&lt;rid&gt;).</summary>
    Cpu = 1,

    /// <summary>The CUDA build (<c>libqlora_cuda</c>, package QLoRA.Runtime.&lt;rid&gt;.Cuda); an error if it cannot load.</summary>
    Cuda = 2,
}

/// <summary>
/// Finds and loads the native core for this process: a <see cref="NativeLibrary.SetDllImportResolver"/>
/// for the bindings assembly, registered when the assembly loads.
/// </summary>
/// <remarks>
/// Order: an explicit path (<see cref="Configure"/> or the <c>QLORA_NATIVE_PATH</c> environment variable:
/// a library file or a folder holding it) is used alone. Otherwise the build (<see cref="QLoraNativeBuild"/>,
/// from <see cref="Configure"/> or <c>QLORA_BACKEND</c> = auto|cpu|cuda) is looked up in
/// <c>runtimes/&lt;rid&gt;/native/</c> and beside the application and the bindings assembly, then by the
/// runtime's own probing (deps.json, the system search path). A library that cannot be found raises a
/// <see cref="DllNotFoundException"/> that lists what was searched and how to get it.
/// </remarks>
public static class QLoraNativeLibrary
{
    /// <summary>The environment variable with an explicit library file or folder.</summary>
    public const string PathVariable = "QLORA_NATIVE_PATH";

    /// <summary>The environment variable choosing the build: auto, cpu or cuda.</summary>
    public const string BackendVariable = "QLORA_BACKEND";

    private static readonly Lock Gate = new();
    private static QLoraNativeBuild? s_build;
    private static string? s_path;
    private static nint s_handle;

    /// <summary>The file that was loaded, or null before the first native call.</summary>
    public static string? LoadedPath { get; private set; }

    /// <summary>The build that was loaded (Cpu or Cuda), or null before the first native call.</summary>
    public static QLoraNativeBuild? LoadedBuild { get; private set; }

    /// <summary>
    /// Chooses the build and/or an explicit library path (a file or a folder) ahead of the first native
    /// call; the arguments override <c>QLORA_BACKEND</c> and <c>QLORA_NATIVE_PATH</c>.
    /// </summary>
    /// <exception cref="InvalidOperationException">The library is already loaded with other settings.</exception>
    public static void Configure(QLoraNativeBuild build = QLoraNativeBuild.Auto, string? path = null)
    {
        if (!Enum.IsDefined(build)) throw new ArgumentOutOfRangeException(nameof(build), build, "not a QLoraNativeBuild");
        lock (Gate)
        {
            if (s_handle != 0)
            {
                if (path is null && (build == QLoraNativeBuild.Auto || build == LoadedBuild)) return;
                throw new InvalidOperationException(
                    $"the QLoRA native library is already loaded ({LoadedBuild} build from {LoadedPath}); call Configure before the first native call");
            }
            s_build = build;
            s_path = path;
        }
    }

    /// <summary>Loads the library now (if not yet loaded) and returns its OS handle.</summary>
    /// <exception cref="DllNotFoundException">It cannot be found or loaded; the message says what was searched and what to do.</exception>
    public static nint Load()
    {
        lock (Gate)
        {
            if (s_handle == 0)
            {
                var (handle, path, build) = Locate(typeof(QLoraNativeLibrary).Assembly);
                s_handle = handle;
                LoadedPath = path;
                LoadedBuild = build;
            }
            return s_handle;
        }
    }

    [SuppressMessage("Usage", "CA2255:The 'ModuleInitializer' attribute should not be used in libraries",
        Justification = "The resolver must be registered before the first P/Invoke of this assembly, whatever the caller does first.")]
    [ModuleInitializer]
    internal static void RegisterResolver() =>
        NativeLibrary.SetDllImportResolver(typeof(QLoraNativeLibrary).Assembly, Resolve);

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath) =>
        libraryName == NativeMethods.LibraryName ? Load() : 0;

    /// <summary>The portable runtime identifier of this process, e.g. linux-x64, win-x64, osx-arm64.</summary>
    public static string RuntimeIdentifier
    {
        get
        {
            string os = OperatingSystem.IsWindows() ? "win"
                : OperatingSystem.IsMacOS() ? "osx"
                : File.Exists("/etc/alpine-release") ? "linux-musl"
                : "linux";
            string arch = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
            return $"{os}-{arch}";
        }
    }

    /// <summary>The file name of a library on this OS: qlora -> libqlora.so / libqlora.dylib / qlora.dll.</summary>
    public static string FileName(string name) =>
        OperatingSystem.IsWindows() ? name + ".dll" : OperatingSystem.IsMacOS() ? $"lib{name}.dylib" : $"lib{name}.so";

    private static string BaseName(QLoraNativeBuild build) => build == QLoraNativeBuild.Cuda ? "qlora_cuda" : "qlora";

    [UnconditionalSuppressMessage("SingleFile", "IL3000", Justification = "An empty Location (single-file apps) is skipped; AppContext.BaseDirectory covers them.")]
    private static (nint Handle, string Path, QLoraNativeBuild Build) Locate(Assembly assembly)
    {
        var log = new StringBuilder();
        string rid = RuntimeIdentifier;
        QLoraNativeBuild build = s_build ?? ParseBackendVariable();
        string? explicitPath = s_path ?? (Environment.GetEnvironmentVariable(PathVariable) is { Length: > 0 } env ? env : null);
        QLoraNativeBuild[] builds = build == QLoraNativeBuild.Auto ? [QLoraNativeBuild.Cuda, QLoraNativeBuild.Cpu] : [build];

        if (explicitPath is not null)
        {
            string origin = s_path is not null ? "QLoraNativeLibrary.Configure(path)" : PathVariable;
            string full = Path.GetFullPath(explicitPath);
            if (!Directory.Exists(full) && !File.Exists(full))
                throw new DllNotFoundException(Message(build, rid, $"{origin} is set to {explicitPath}, which does not exist", log));
            IEnumerable<(string, QLoraNativeBuild)> files = Directory.Exists(full)
                ? builds.Select(b => (Path.Combine(full, FileName(BaseName(b))), b))
                : [(full, Path.GetFileName(full).Contains("cuda", StringComparison.OrdinalIgnoreCase) ? QLoraNativeBuild.Cuda : QLoraNativeBuild.Cpu)];
            foreach (var (file, b) in files)
                if (TryLoadFile(file, log) is { } h) return (h, file, b);
            throw new DllNotFoundException(Message(build, rid, $"{origin} is set to {explicitPath}, and nothing there loads", log));
        }

        var dirs = new List<string>();
        foreach (string? root in new[] { AppContext.BaseDirectory, Path.GetDirectoryName(assembly.Location) })
        {
            if (string.IsNullOrEmpty(root)) continue;
            string dir = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
            dirs.Add(Path.Combine(dir, "runtimes", rid, "native"));
            dirs.Add(dir);
        }
        foreach (QLoraNativeBuild b in builds)
        {
            string file = FileName(BaseName(b));
            foreach (string dir in dirs.Distinct(StringComparer.Ordinal))
                if (TryLoadFile(Path.Combine(dir, file), log) is { } h) return (h, Path.Combine(dir, file), b);
            if (NativeLibrary.TryLoad(BaseName(b), assembly, null, out nint probed))
                return (probed, BaseName(b) + " (found by the runtime's probing)", b);
            log.AppendLine($"  {BaseName(b)}: not found by the runtime's probing (deps.json, the system library path)");
        }
        throw new DllNotFoundException(Message(build, rid, "it is not installed next to the application", log));
    }

    private static QLoraNativeBuild ParseBackendVariable()
    {
        string? value = Environment.GetEnvironmentVariable(BackendVariable);
        return value?.Trim().ToLowerInvariant() switch
        {
            null or "" or "auto" => QLoraNativeBuild.Auto,
            "cpu" => QLoraNativeBuild.Cpu,
            "cuda" => QLoraNativeBuild.Cuda,
            _ => throw new DllNotFoundException($"{BackendVariable}='{value}' is not one of auto, cpu, cuda; the QLoRA native library was not loaded"),
        };
    }

    private static nint? TryLoadFile(string file, StringBuilder log)
    {
        if (!File.Exists(file))
        {
            log.AppendLine($"  {file}: not found");
            return null;
        }
        try
        {
            return NativeLibrary.Load(file);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            log.AppendLine($"  {file}: exists but does not load: {e.Message}");
            return null;
        }
    }

    private static string Message(QLoraNativeBuild build, string rid, string why, StringBuilder log)
    {
        string package = build == QLoraNativeBuild.Cuda ? $"QLoRA.Runtime.{rid}.Cuda" : $"QLoRA.Runtime.{rid}";
        string flavour = build == QLoraNativeBuild.Cuda ? "cuda" : "cpu";
        return $"The QLoRA native library ({build} build, {FileName(BaseName(build))}) " +
               $"could not be loaded for {rid}: {why}.\nSearched:\n{log}" +
               "To fix it, do one of:\n" +
               $"  - add the runtime package: dotnet add package {package}\n" +
               $"  - build it from source (repository root): cmake -S . -B artifacts/native/{rid}-{flavour} -DCMAKE_BUILD_TYPE=Release" +
               (build == QLoraNativeBuild.Cuda ? " -DQLORA_CUDA=ON" : "") +
               $" && cmake --build artifacts/native/{rid}-{flavour}  (or: dotnet run build.cs -- native)\n" +
               $"  - set {PathVariable} to the library file or its folder" +
               (build == QLoraNativeBuild.Cuda ? $"\n  - or use the CPU build: {BackendVariable}=cpu" : "");
    }
}
