using System.Diagnostics;
using QLoRA.BindingGen;

namespace QLoRA.Native.Tests;

/// <summary>The generator: the committed output is current, and its rules on small headers of its own.</summary>
public sealed class BindingGenTests
{
    private static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "native", "include", "qlora.h"))) return dir.FullName;
            throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        }
    }

    private string _temp = "";

    [SetUp]
    public void CreateTempRepo()
    {
        _temp = Path.Combine(Path.GetTempPath(), $"bindinggen-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(_temp, "native", "include"));
    }

    [TearDown]
    public void DeleteTempRepo() => Directory.Delete(_temp, recursive: true);

    private const string Prelude = """
        #include <stddef.h>
        #include <stdint.h>
        #define QLORA_API __attribute__((visibility("default")))

        """;

    private IReadOnlyList<GeneratedFile> Generate(string body)
    {
        File.WriteAllText(Path.Combine(_temp, "native", "include", "qlora.h"), Prelude + body + "\n");
        return Generator.Generate(new GeneratorOptions(_temp));
    }

    private static string File_(IReadOnlyList<GeneratedFile> files, string name) => files.Single(f => f.Path.EndsWith(name, StringComparison.Ordinal)).Content;

    [Test]
    public void CommittedBindings_AreUpToDateWithQLoraH()
    {
        var options = new GeneratorOptions(RepoRoot);
        IReadOnlyList<StaleFile> stale = Generator.Check(options, Generator.Generate(options));
        Assert.That(stale, Is.Empty, $"stale: {string.Join("; ", stale)}; run: {Generator.Command}");
    }

    [Test]
    public void Output_IsDeterministic()
    {
        var options = new GeneratorOptions(RepoRoot);
        var a = Generator.Generate(options);
        var b = Generator.Generate(options);
        Assert.That(b, Is.EqualTo(a));
        Assert.That(a.Select(f => f.Content), Has.None.Contains(DateTime.UtcNow.Year.ToString() + "-"));
    }

    [Test]
    public void Types_MapToExactBlittableCSharp()
    {
        var files = Generate("""
            /* Called for every log line. */
            typedef void (*qlora_log_fn)(void * user, int32_t level, const char * message);
            typedef struct qlora_thing * qlora_thing_t;
            typedef struct qlora_borrowed * qlora_borrowed_t;
            typedef enum qlora_mode { QLORA_MODE_FAST = 1, QLORA_MODE_SLOW = -3, QLORA_MODE_4BIT } qlora_mode;
            enum { QLORA_ANON_LIMIT = 9 };
            #define QLORA_BIG 0x100000000
            #define QLORA_OCTAL 010
            #define QLORA_NOT_A_NUMBER "text"
            typedef struct qlora_shape {
                int64_t      dims[4];    /* sizes */
                size_t       bytes;
                uint8_t      flags;
                double       scale;
                qlora_log_fn log;
                const char * const * names;
                qlora_thing_t thing;
                qlora_mode   mode;
                int (*inline_fn)(int);
            } qlora_shape;
            QLORA_API int32_t qlora_thing_create(const qlora_shape * shape, qlora_thing_t * out);
            QLORA_API void qlora_thing_free(qlora_thing_t thing);
            QLORA_API uint64_t qlora_count(qlora_borrowed_t b, ptrdiff_t offset, uint16_t * out);
            """);
        string structs = File_(files, "Structs.g.cs"), handles = File_(files, "Handles.g.cs"), callbacks = File_(files, "Callbacks.g.cs");
        string methods = File_(files, "NativeMethods.g.cs"), enums = File_(files, "Enums.g.cs"), constants = File_(files, "Constants.g.cs");
        string native = File_(files, "abi_layout.gen.cpp"), tests = File_(files, "AbiLayoutTests.g.cs");
        Assert.Multiple(() =>
        {
            Assert.That(structs, Does.Contain("public fixed long Dims[4];"));
            Assert.That(structs, Does.Contain("public nuint Bytes;"));
            Assert.That(structs, Does.Contain("public byte Flags;"));
            Assert.That(structs, Does.Contain("public double Scale;"));
            Assert.That(structs, Does.Contain("public QLoraLogFn Log;"));
            Assert.That(structs, Does.Contain("public byte** Names;"));
            Assert.That(structs, Does.Contain("public QLoraThingHandle Thing;"));
            Assert.That(structs, Does.Contain("public QLoraMode Mode;"));
            Assert.That(structs, Does.Contain("public delegate* unmanaged[Cdecl]<int, int> InlineFn;"));
            Assert.That(structs, Does.Contain("<summary>sizes</summary>"));
            Assert.That(callbacks, Does.Contain("public readonly delegate* unmanaged[Cdecl]<void*, int, byte*, void> Pointer;"));
            Assert.That(callbacks, Does.Contain("<summary>Called for every log line.</summary>"));
            Assert.That(enums, Does.Contain("public enum QLoraMode : int"));
            Assert.That(enums, Does.Contain("ModeFast = 1,").And.Contain("ModeSlow = -3,").And.Contain("Mode4bit = -2,"),
                "the prefix QLORA_MODE_ would leave a name starting with a digit, so only QLORA_ is dropped");
            Assert.That(constants, Does.Contain("public const int AnonLimit = 9;").And.Contain("public const long Big = 4294967296;")
                                                   .And.Contain("public const int Octal = 8;"));
            Assert.That(constants, Does.Not.Contain("NotANumber"));
            Assert.That(handles, Does.Contain("public readonly record struct QLoraThingHandle(nint Value)"));
            Assert.That(handles, Does.Contain("public sealed partial class QLoraThingSafeHandle : QLoraSafeHandle"));
            Assert.That(handles, Does.Contain("NativeMethods.qlora_thing_free(new QLoraThingHandle(raw))"));
            Assert.That(handles, Does.Not.Contain("QLoraBorrowedSafeHandle"), "no _free, so no owner");
            Assert.That(methods, Does.Contain("public static partial int qlora_thing_create(QLoraShape* shape, QLoraThingHandle* @out);"));
            Assert.That(methods, Does.Contain("public static partial ulong qlora_count(QLoraBorrowedHandle b, nint offset, ushort* @out);"));
            Assert.That(native, Does.Contain("{\"qlora_shape\", \"dims\", offsetof(qlora_shape, dims)},"));
            Assert.That(native, Does.Contain("{\"QLORA_ANON_LIMIT\", static_cast<int64_t>(QLORA_ANON_LIMIT)},"));
            Assert.That(native, Does.Contain("{\"qlora_log_fn\", sizeof(qlora_log_fn)},"));
            Assert.That(tests, Does.Contain("(byte*)value.Dims - origin").And.Contain("(byte*)&value.Bytes - origin"));
            Assert.That(tests, Does.Contain("[TestCase(\"qlora_count\")]"));
        });
    }

    [TestCase("#include \"no_such_header.h\"\n", "no_such_header.h")]
    [TestCase("struct qlora_s { int a; };;\n", "extra ';'")]
    [TestCase("QLORA_API int qlora_f(undeclared_t x);\n", "unknown type name 'undeclared_t'")]
    public void AnyClangDiagnostic_FailsTheRun(string body, string expected)
    {
        var e = Assert.Throws<BindingGenException>(() => Generate(body));
        Assert.That(e!.Message, Does.Contain("reported diagnostics").And.Contain(expected));
    }

    [TestCase("typedef struct qlora_s { bool on; } qlora_s;\n", "use an int32_t flag", "#include <stdbool.h>\n")]
    [TestCase("typedef struct qlora_s { long n; } qlora_s;\n", "'long' is 32-bit on Windows", "")]
    [TestCase("int32_t qlora_hidden(void);\n", "qlora_hidden is declared without QLORA_API", "")]
    [TestCase("QLORA_API int32_t qlora_printf(const char * f, ...);\n", "variadic", "")]
    [TestCase("typedef union qlora_u { int a; float b; } qlora_u;\n", "no unions", "")]
    [TestCase("QLORA_API int32_t other_prefix(void);\n", "does not start with qlora_", "")]
    [TestCase("typedef struct qlora_s { int bits : 3; } qlora_s;\n", "bit-field", "")]
    [TestCase("typedef struct qlora_s { struct qlora_inner { int a; } inner[2]; } qlora_s;\n", "nested struct", "")]
    public void UnsupportedDeclarations_AreErrorsNamingTheFix(string body, string expected, string include)
    {
        var e = Assert.Throws<BindingGenException>(() => Generate(include + body));
        Assert.That(e!.Message, Does.Contain(expected));
    }

    [Test]
    public void CheckMode_ListsStaleFiles_AndTheCommandToRun()
    {
        string header = "typedef struct qlora_p { int32_t a; } qlora_p;\nQLORA_API int32_t qlora_get(qlora_p * p);\n";
        var options = new GeneratorOptions(_temp);
        Generator.Write(options, Generate(header));
        Assert.That(Generator.Check(options, Generate(header)), Is.Empty);

        File.WriteAllText(Path.Combine(_temp, options.BindingsDir, "Old.g.cs"), "// left over");
        var stale = Generator.Check(options, Generate(header.Replace("int32_t a;", "int32_t a; float b;")));
        Assert.That(stale.Select(s => s.Path), Is.EquivalentTo(new[]
        {
            $"{options.BindingsDir}/Enums.g.cs", $"{options.BindingsDir}/Constants.g.cs", $"{options.BindingsDir}/Structs.g.cs",
            $"{options.BindingsDir}/Callbacks.g.cs", $"{options.BindingsDir}/Handles.g.cs", $"{options.BindingsDir}/NativeMethods.g.cs",
            $"{options.BindingsDir}/qlora.h.sha256", $"{options.TestsDir}/AbiLayoutTests.g.cs", options.NativeLayoutFile,
            $"{options.BindingsDir}/Old.g.cs",
        }));

        // The program itself: exit code 1 and the command to run.
        string gen = Path.Combine(AppContext.BaseDirectory, "BindingGen.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { gen, "--check", "--repo", _temp }) psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Multiple(() =>
        {
            Assert.That(p.ExitCode, Is.EqualTo(1));
            Assert.That(stderr, Does.Contain("bindings/QLoRA.Native/Generated/Structs.g.cs: differs from what qlora.h generates"));
            Assert.That(stderr, Does.Contain("Old.g.cs: no longer generated (delete it)"));
            Assert.That(stderr, Does.Contain("Run from the repository root: dotnet run --project tools/BindingGen"));
        });
    }

    [TestCase("const char *const *", "char * *")]
    [TestCase("void (*)(void *, int32_t, const char *)", "void (void *, int32_t, char *) *")]
    [TestCase("float[16]", "float[16]")]
    [TestCase("unsigned", "unsigned int")]
    [TestCase("unsigned long long int", "unsigned long long")]
    [TestCase("struct qlora_x *", "struct qlora_x *")]
    [TestCase("int (*(*)(void))[3]", "int[3] * () *")]
    public void CTypeParser_UnderstandsClangSpellings(string spelling, string expected)
    {
        Assert.That(CType.Parse(spelling).ToString(), Is.EqualTo(expected));
    }
}
