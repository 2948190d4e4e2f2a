using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Training;

/// <summary>Files and directories written all or nothing (temporary name in the same directory, flushed, renamed).</summary>
public static class AtomicFiles
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Writes indented JSON atomically.</summary>
    public static void WriteJson(string path, JsonNode json) => WriteBytes(path, JsonSerializer.SerializeToUtf8Bytes(json, Indented));

    /// <summary>Writes bytes atomically: a reader sees the old file or the whole new one, never a part.</summary>
    public static void WriteBytes(string path, byte[] bytes)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                f.Write(bytes);
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            if (File.Exists(tmp)) File.Delete(tmp);
            throw;
        }
    }
}
