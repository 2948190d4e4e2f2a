using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;

namespace QLoRA.Native.Tests;

/// <summary>
/// The resolver. Settings that must apply before the first native call are tested on a fresh copy of
/// the bindings assembly in its own load context (its own resolver and load state).
/// </summary>
public sealed class NativeLibraryTests
{
    private static string Rid => QLoraNativeLibrary.RuntimeIdentifier;

    private static string BuiltLibrary => Path.Combine(AppContext.BaseDirectory, "runtimes", Rid, "native", QLoraNativeLibrary.FileName("qlora"));

    [Test]
    public void LoadsTheCpuBuild_FromRuntimesFolder()
    {
        nint handle = QLoraNativeLibrary.Load();
        Assert.Multiple(() =>
        {
            Assert.That(handle, Is.Not.Zero);
            Assert.That(QLoraNativeLibrary.LoadedPath, Is.EqualTo(BuiltLibrary));
            Assert.That(QLoraNativeLibrary.LoadedBuild, Is.EqualTo(QLoraNativeBuild.Cpu));
            Assert.That(Rid, Is.EqualTo($"linux-{RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant()}"));
        });
    }

    [Test]
    public void Configure_AfterLoading_WithOtherSettings_Throws()
    {
        QLoraNativeLibrary.Load();
        Assert.Multiple(() =>
        {
            Assert.DoesNotThrow(() => QLoraNativeLibrary.Configure(QLoraNativeBuild.Cpu));
            Assert.Throws<InvalidOperationException>(() => QLoraNativeLibrary.Configure(QLoraNativeBuild.Cuda));
            Assert.Throws<InvalidOperationException>(() => QLoraNativeLibrary.Configure(path: "/elsewhere"));
        });
    }

    [Test]
    public void MissingLibrary_MessageSaysWhatWasSearchedAndWhatToDo()
    {
        string missing = Path.Combine(Path.GetTempPath(), "qlora-no-such-folder");
        var e = FreshCall(QLoraNativeBuild.Cpu, missing);
        Assert.Multiple(() =>
        {
            Assert.That(e, Is.TypeOf<DllNotFoundException>());
            Assert.That(e.Message, Does.Contain($"QLoraNativeLibrary.Configure(path) is set to {missing}, which does not exist"));
            Assert.That(e.Message, Does.Contain($"dotnet add package QLoRA.Runtime.{Rid}"));
            Assert.That(e.Message, Does.Contain($"cmake -S . -B artifacts/native/{Rid}-cpu"));
            Assert.That(e.Message, Does.Contain("QLORA_NATIVE_PATH"));
        });
    }

    [Test]
    public void CudaBuildRequested_ButNotInstalled_NamesTheCudaPackage()
    {
        var e = FreshCall(QLoraNativeBuild.Cuda, path: null);
        Assert.Multiple(() =>
        {
            Assert.That(e, Is.TypeOf<DllNotFoundException>());
            Assert.That(e.Message, Does.Contain(Path.Combine(AppContext.BaseDirectory, "runtimes", Rid, "native", "libqlora_cuda.so") + ": not found"));
            Assert.That(e.Message, Does.Contain($"dotnet add package QLoRA.Runtime.{Rid}.Cuda"));
            Assert.That(e.Message, Does.Contain("-DQLORA_CUDA=ON"));
            Assert.That(e.Message, Does.Contain("QLORA_BACKEND=cpu"));
        });
    }

    [Test]
    public void ExplicitLibraryFileOrFolder_IsLoaded([Values(true, false)] bool folder)
    {
        string copy = Path.Combine(Path.GetTempPath(), $"qlora-test-{Environment.ProcessId}-{folder}", QLoraNativeLibrary.FileName("qlora"));
        Directory.CreateDirectory(Path.GetDirectoryName(copy)!);
        File.Copy(BuiltLibrary, copy, overwrite: true);
        try
        {
            var (abi, loaded) = FreshVersionCall(QLoraNativeBuild.Auto, folder ? Path.GetDirectoryName(copy)! : copy);
            Assert.Multiple(() =>
            {
                Assert.That(abi, Is.EqualTo(QLoRA.Native.Interop.QLoraConstants.AbiVersion));
                Assert.That(loaded, Is.EqualTo(copy));
            });
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(copy)!, recursive: true);
        }
    }

    // Loads a private copy of QLoRA.Native, configures it, and makes its first native call.
    private static Exception FreshCall(QLoraNativeBuild build, string? path)
    {
        var context = new AssemblyLoadContext($"qlora-resolver-{Guid.NewGuid()}", isCollectible: true);
        try
        {
            Type lib = Configure(context, build, path);
            var e = Assert.Throws<TargetInvocationException>(() => lib.GetMethod("Load")!.Invoke(null, null));
            return e!.InnerException!;
        }
        finally
        {
            context.Unload();
        }
    }

    private static (int Abi, string? LoadedPath) FreshVersionCall(QLoraNativeBuild build, string path)
    {
        var context = new AssemblyLoadContext($"qlora-resolver-{Guid.NewGuid()}", isCollectible: true);
        try
        {
            Type lib = Configure(context, build, path);
            Type methods = lib.Assembly.GetType("QLoRA.Native.Interop.NativeMethods")!;
            int abi = (int)methods.GetMethod("qlora_abi_version")!.Invoke(null, null)!;
            return (abi, (string?)lib.GetProperty("LoadedPath")!.GetValue(null));
        }
        finally
        {
            context.Unload();
        }
    }

    private static Type Configure(AssemblyLoadContext context, QLoraNativeBuild build, string? path)
    {
        Assembly copy = context.LoadFromAssemblyPath(typeof(QLoraNativeLibrary).Assembly.Location);
        Assert.That(copy, Is.Not.SameAs(typeof(QLoraNativeLibrary).Assembly));
        Type lib = copy.GetType(typeof(QLoraNativeLibrary).FullName!)!;
        Type buildType = copy.GetType(typeof(QLoraNativeBuild).FullName!)!;
        lib.GetMethod("Configure")!.Invoke(null, [Enum.ToObject(buildType, (int)build), path]);
        return lib;
    }
}
