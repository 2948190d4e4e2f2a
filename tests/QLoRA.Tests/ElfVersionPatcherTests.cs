using System.Diagnostics;

using QLoRA.Build;

namespace QLoRA.Tests;

/// <summary>
/// The ELF patcher behind build/QLoRA.TorchSharpFix.targets, checked with binutils' readelf as the
/// independent reader, on a copy of TorchSharp's real libLibTorchSharp.so and on broken files.
/// </summary>
public class ElfVersionPatcherTests
{
    private static readonly string[] Glibcxx332 = ["GLIBCXX_3.4.32"];
    private string _dir = "";

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "qlora-elf-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, true);

    // The pristine library as NuGet ships it (the package cache copy, which must never be modified).
    private static string PristineLibrary()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                      ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string path = Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!File.Exists(path)) Assert.Ignore($"TorchSharp 0.107.0 is not in the NuGet cache at {path}");
        return path;
    }

    private static string ReadElfVersions(string path)
    {
        var psi = new ProcessStartInfo("readelf", ["-V", "-W", path]) { RedirectStandardOutput = true, RedirectStandardError = true };
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Assert.Ignore("readelf (binutils) is not installed");
            throw;
        }
        using (p)
        {
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.That(p.ExitCode, Is.Zero, "readelf failed");
            return output;
        }
    }

    private static string FlagsOf(string readelf, string version)
    {
        var line = readelf.Split('\n').FirstOrDefault(l => l.Contains($"Name: {version} ", StringComparison.Ordinal));
        Assert.That(line, Is.Not.Null, $"readelf lists no requirement {version}");
        int at = line!.IndexOf("Flags: ", StringComparison.Ordinal) + 7;
        return line[at..].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0];
    }

    [Test]
    public void MarksOnlyTheGlibcxx332RequirementWeak()
    {
        string pristine = PristineLibrary();
        string copy = Path.Combine(_dir, "libLibTorchSharp.so");
        File.Copy(pristine, copy);
        Assert.That(FlagsOf(ReadElfVersions(copy), "GLIBCXX_3.4.32"), Is.EqualTo("none"));

        var changes = ElfVersionPatcher.PatchFile(copy, Glibcxx332);

        Assert.That(changes, Has.Count.EqualTo(1));
        Assert.That(changes[0].Action, Is.EqualTo(ElfVersionAction.MarkedWeak));
        Assert.That(changes[0].File, Is.EqualTo("libstdc++.so.6"));
        string after = ReadElfVersions(copy);
        Assert.That(FlagsOf(after, "GLIBCXX_3.4.32"), Is.EqualTo("WEAK"));
        Assert.That(FlagsOf(after, "GLIBCXX_3.4.18"), Is.EqualTo("none"));

        // Exactly one byte differs: the low byte of that entry's vna_flags.
        byte[] a = File.ReadAllBytes(pristine), b = File.ReadAllBytes(copy);
        Assert.That(b, Has.Length.EqualTo(a.Length));
        var diffs = Enumerable.Range(0, a.Length).Where(i => a[i] != b[i]).ToList();
        Assert.That(diffs, Has.Count.EqualTo(1));
        Assert.That(b[diffs[0]] ^ a[diffs[0]], Is.EqualTo(ElfVersionPatcher.VerFlgWeak));
    }

    [Test]
    public void SecondRunChangesNothing()
    {
        string copy = Path.Combine(_dir, "libLibTorchSharp.so");
        File.Copy(PristineLibrary(), copy);
        ElfVersionPatcher.PatchFile(copy, Glibcxx332);
        byte[] once = File.ReadAllBytes(copy);
        var stamp = File.GetLastWriteTimeUtc(copy);

        var changes = ElfVersionPatcher.PatchFile(copy, Glibcxx332);

        Assert.That(changes.Single().Action, Is.EqualTo(ElfVersionAction.AlreadyWeak));
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(once));
        Assert.That(File.GetLastWriteTimeUtc(copy), Is.EqualTo(stamp), "an already-patched file is not rewritten");
    }

    [Test]
    public void NeverWritesThroughAHardLink()
    {
        string original = Path.Combine(_dir, "cache-copy.so");
        File.Copy(PristineLibrary(), original);
        string link = Path.Combine(_dir, "libLibTorchSharp.so");
        if (!OperatingSystem.IsLinux()) Assert.Ignore("hard links are tested on Linux");
        Assert.That(link_(original, link), Is.Zero, "link(2) failed");
        byte[] before = File.ReadAllBytes(original);

        ElfVersionPatcher.PatchFile(link, Glibcxx332);

        Assert.That(File.ReadAllBytes(original), Is.EqualTo(before), "the linked original must stay untouched");
        Assert.That(FlagsOf(ReadElfVersions(link), "GLIBCXX_3.4.32"), Is.EqualTo("WEAK"));
    }

    [Test]
    public void AFileWithoutTheRequirementIsLeftAlone()
    {
        string copy = Path.Combine(_dir, "libLibTorchSharp.so");
        File.Copy(PristineLibrary(), copy);
        byte[] before = File.ReadAllBytes(copy);
        Assert.That(ElfVersionPatcher.PatchFile(copy, ["GLIBCXX_9.9.99"]), Is.Empty);
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(before));
    }

    [Test]
    public void BrokenFilesAreRejectedWithTheReason()
    {
        byte[] real = File.ReadAllBytes(PristineLibrary());
        var cases = new (string Name, byte[] Bytes, string Expect)[]
        {
            ("empty", [], "not an ELF file"),
            ("text", "hello, world, this is not an ELF file at all, just some text to fill 64 bytes"u8.ToArray(), "not an ELF file"),
            ("32-bit", Patch(real, 4, 1), "not a 64-bit ELF"),
            ("big-endian", Patch(real, 5, 2), "not a little-endian"),
            ("truncated", real[..4096], "outside the 4096-byte file"),
        };
        foreach (var (name, bytes, expect) in cases)
        {
            string path = Path.Combine(_dir, name + ".so");
            File.WriteAllBytes(path, bytes);
            var e = Assert.Throws<ElfFormatException>(() => ElfVersionPatcher.PatchFile(path, Glibcxx332), name);
            Assert.That(e!.Message, Does.Contain(path).And.Contain(expect), name);
            Assert.That(File.ReadAllBytes(path), Is.EqualTo(bytes), $"{name}: a rejected file is not modified");
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "link")]
    private static extern int link_([System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string oldPath,
                                    [System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.LPUTF8Str)] string newPath);

    private static byte[] Patch(byte[] source, int offset, byte value)
    {
        byte[] copy = (byte[])source.Clone();
        copy[offset] = value;
        return copy;
    }
}
