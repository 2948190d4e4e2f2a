// Marks chosen ELF version requirements (.gnu.version_r entries) as weak
// (VER_FLG_WEAK), so that the dynamic loader accepts a library whose
// libstdc++ lacks that version as long as no symbol bound at load time needs it.
//
// Why: TorchSharp 0.107's libLibTorchSharp.so asks for GLIBCXX_3.4.32 (GCC 13),
// which older distributions' libstdc++ (Debian 12: GCC 12, GLIBCXX_3.4.30)
// lack; only `_ZSt21ios_base_library_initv` carries that version and nothing
// calls it. TorchSharp then reports a misleading "doesn't contain a reference
// to libtorch-cpu-linux-x64" error.
//
// This file is compiled twice:
//  - by MSBuild's RoslynCodeTaskFactory (build/QLoRA.TorchSharpFix.targets):
//    the task class at the bottom;
//  - into tests/QLoRA.Tests with QLORA_ELF_PATCHER_ONLY defined: the pure
//    patcher, unit-tested against readelf.
// Keep it C# 7.3-compatible (no file-scoped namespaces, no records): the task
// factory compiles it with its own defaults.

using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace QLoRA.Build
{
    /// <summary>What happened to one version requirement of one file.</summary>
    public enum ElfVersionAction
    {
        MarkedWeak,
        AlreadyWeak,
    }

    /// <summary>One matching requirement: the library it is needed from, the version and what was done.</summary>
    public sealed class ElfVersionChange
    {
        public ElfVersionChange(string file, string version, ElfVersionAction action)
        {
            File = file;
            Version = version;
            Action = action;
        }

        public string File { get; private set; }
        public string Version { get; private set; }
        public ElfVersionAction Action { get; private set; }
    }

    /// <summary>A file that is not a well-formed little-endian ELF64 object.</summary>
    public sealed class ElfFormatException : Exception
    {
        public ElfFormatException(string message) : base(message) { }
    }

    /// <summary>Pure ELF64 logic: parse section headers, walk the Verneed/Vernaux chain, set VER_FLG_WEAK.</summary>
    public static class ElfVersionPatcher
    {
        public const uint ShtGnuVerneed = 0x6ffffffe;
        public const ushort VerFlgWeak = 0x2;

        /// <summary>
        /// Sets VER_FLG_WEAK on every Vernaux entry of <paramref name="image"/> whose version name is in
        /// <paramref name="versions"/>. Changes only the two flag bytes of those entries. Returns what matched
        /// (empty when the file has no such requirement). Throws <see cref="ElfFormatException"/> naming the
        /// problem when the image is not a well-formed ELF64 little-endian file.
        /// </summary>
        public static List<ElfVersionChange> MarkWeak(byte[] image, ICollection<string> versions)
        {
            if (image == null) throw new ArgumentNullException("image");
            if (versions == null) throw new ArgumentNullException("versions");
            var changes = new List<ElfVersionChange>();
            if (image.Length < 64 || image[0] != 0x7f || image[1] != (byte)'E' || image[2] != (byte)'L' || image[3] != (byte)'F')
                throw new ElfFormatException("not an ELF file (bad magic or shorter than an ELF header)");
            if (image[4] != 2) throw new ElfFormatException("not a 64-bit ELF file (EI_CLASS = " + image[4] + ")");
            if (image[5] != 1) throw new ElfFormatException("not a little-endian ELF file (EI_DATA = " + image[5] + ")");

            ulong shoff = U64(image, 0x28);
            ushort shentsize = U16(image, 0x3A);
            ushort shnum = U16(image, 0x3C);
            if (shoff == 0 || shnum == 0) throw new ElfFormatException("the file has no section headers");
            if (shentsize < 64) throw new ElfFormatException("section header size " + shentsize + " is smaller than 64");
            CheckRange(image, shoff, (ulong)shentsize * shnum, "section header table");

            bool found = false;
            for (int i = 0; i < shnum; i++)
            {
                long sh = (long)shoff + (long)i * shentsize;
                if (U32(image, sh + 4) != ShtGnuVerneed) continue;
                found = true;
                ulong offset = U64(image, sh + 0x18);
                ulong size = U64(image, sh + 0x20);
                uint link = U32(image, sh + 0x28);
                uint count = U32(image, sh + 0x2C);
                CheckRange(image, offset, size, ".gnu.version_r (section " + i + ")");
                if (link >= shnum) throw new ElfFormatException(".gnu.version_r links to string table section " + link + " of " + shnum);
                long strsh = (long)shoff + (long)link * shentsize;
                ulong stroff = U64(image, strsh + 0x18);
                ulong strsize = U64(image, strsh + 0x20);
                CheckRange(image, stroff, strsize, "string table of .gnu.version_r (section " + link + ")");

                ulong vn = 0;
                for (uint n = 0; n < count; n++)
                {
                    if (vn + 16 > size) throw new ElfFormatException("Verneed entry " + n + " lies outside .gnu.version_r");
                    long at = (long)(offset + vn);
                    ushort cnt = U16(image, at + 2);
                    string file = Str(image, stroff, strsize, U32(image, at + 4));
                    uint aux = U32(image, at + 8);
                    uint next = U32(image, at + 12);
                    ulong va = vn + aux;
                    for (int a = 0; a < cnt; a++)
                    {
                        if (va + 16 > size) throw new ElfFormatException("Vernaux entry " + a + " of " + file + " lies outside .gnu.version_r");
                        long ap = (long)(offset + va);
                        string name = Str(image, stroff, strsize, U32(image, ap + 8));
                        if (versions.Contains(name))
                        {
                            ushort flags = U16(image, ap + 4);
                            if ((flags & VerFlgWeak) != 0)
                            {
                                changes.Add(new ElfVersionChange(file, name, ElfVersionAction.AlreadyWeak));
                            }
                            else
                            {
                                flags |= VerFlgWeak;
                                image[ap + 4] = (byte)(flags & 0xff);
                                image[ap + 5] = (byte)(flags >> 8);
                                changes.Add(new ElfVersionChange(file, name, ElfVersionAction.MarkedWeak));
                            }
                        }
                        uint anext = U32(image, ap + 12);
                        if (anext == 0) break;
                        va += anext;
                    }
                    if (next == 0) break;
                    vn += next;
                }
            }
            if (!found) throw new ElfFormatException("no .gnu.version_r (SHT_GNU_verneed) section");
            return changes;
        }

        /// <summary>
        /// Patches <paramref name="path"/> if needed. The new contents go to a temporary file that then replaces
        /// the path, so a hard link or symlink into the NuGet cache is never written through.
        /// </summary>
        public static List<ElfVersionChange> PatchFile(string path, ICollection<string> versions)
        {
            byte[] image = System.IO.File.ReadAllBytes(path);
            List<ElfVersionChange> changes;
            try
            {
                changes = MarkWeak(image, versions);
            }
            catch (ElfFormatException e)
            {
                throw new ElfFormatException(path + ": " + e.Message);
            }
            bool modified = false;
            foreach (var c in changes) modified |= c.Action == ElfVersionAction.MarkedWeak;
            if (modified)
            {
                // A new inode renamed over the old name (File.Replace is rename(2) on Unix).
                string tmp = path + ".qlora-tmp";
                System.IO.File.WriteAllBytes(tmp, image);
                System.IO.File.Replace(tmp, path, null);
            }
            return changes;
        }

        private static void CheckRange(byte[] image, ulong offset, ulong size, string what)
        {
            if (offset > (ulong)image.Length || size > (ulong)image.Length - offset)
                throw new ElfFormatException(what + " [" + offset + ", +" + size + ") lies outside the " + image.Length + "-byte file");
        }

        private static string Str(byte[] image, ulong stroff, ulong strsize, uint index)
        {
            if (index >= strsize) throw new ElfFormatException("string index " + index + " outside the " + strsize + "-byte string table");
            long start = (long)(stroff + index);
            long end = start;
            long limit = (long)(stroff + strsize);
            while (end < limit && image[end] != 0) end++;
            if (end == limit) throw new ElfFormatException("unterminated string at string table index " + index);
            return Encoding.UTF8.GetString(image, (int)start, (int)(end - start));
        }

        private static ushort U16(byte[] b, long at)
        {
            if (at < 0 || at + 2 > b.Length) throw new ElfFormatException("read past the end of the file at " + at);
            return (ushort)(b[at] | (b[at + 1] << 8));
        }

        private static uint U32(byte[] b, long at)
        {
            if (at < 0 || at + 4 > b.Length) throw new ElfFormatException("read past the end of the file at " + at);
            return (uint)(b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24));
        }

        private static ulong U64(byte[] b, long at)
        {
            return U32(b, at) | ((ulong)U32(b, at + 4) << 32);
        }
    }

#if !QLORA_ELF_PATCHER_ONLY
    /// <summary>MSBuild task: patches the given copies of libLibTorchSharp.so in an output folder.</summary>
    public sealed class QLoRAMarkElfVersionsWeak : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; }

        /// <summary>Semicolon-separated version names, e.g. GLIBCXX_3.4.32.</summary>
        [Microsoft.Build.Framework.Required]
        public string Versions { get; set; }

        /// <summary>The NuGet package root: files under it are never touched.</summary>
        public string NuGetPackageRoot { get; set; }

        public override bool Execute()
        {
            var versions = new HashSet<string>(StringComparer.Ordinal);
            foreach (var v in (Versions ?? "").Split(new[] { ';' }, StringSplitOptions.RemoveEmptyEntries)) versions.Add(v.Trim());
            string cache = string.IsNullOrEmpty(NuGetPackageRoot) ? null : Path.GetFullPath(NuGetPackageRoot);
            foreach (var item in Files)
            {
                string path = Path.GetFullPath(item.ItemSpec);
                if (cache != null && path.StartsWith(cache, StringComparison.Ordinal))
                {
                    Log.LogWarning("QLoRA: not patching {0}: it is inside the NuGet package cache ({1})", path, cache);
                    continue;
                }
                try
                {
                    var changes = ElfVersionPatcher.PatchFile(path, versions);
                    if (changes.Count == 0)
                        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Normal,
                            "QLoRA: {0} has no {1} requirement; left unchanged", path, string.Join("/", versions));
                    foreach (var c in changes)
                        Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High,
                            c.Action == ElfVersionAction.MarkedWeak
                                ? "QLoRA: marked the {1} requirement (from {2}) weak in {0}, so it loads with an older libstdc++"
                                : "QLoRA: the {1} requirement (from {2}) in {0} is already weak",
                            path, c.Version, c.File);
                }
                catch (ElfFormatException e)
                {
                    Log.LogWarning("QLoRA: could not patch {0}: {1}", path, e.Message);
                }
                catch (IOException e)
                {
                    Log.LogError("QLoRA: could not patch {0}: {1}", path, e.Message);
                }
                catch (UnauthorizedAccessException e)
                {
                    Log.LogError("QLoRA: could not patch {0}: {1}", path, e.Message);
                }
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
