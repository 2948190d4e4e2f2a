namespace QLoRA.BindingGen;

/// <summary>A C type as clang spells it in the JSON AST ("qualType"), parsed.</summary>
public abstract record CType
{
    /// <summary>A builtin ("unsigned int"), a typedef name ("int32_t") or a tag ("struct qlora_view").</summary>
    public sealed record Named(string Name) : CType
    {
        public override string ToString() => Name;
    }

    public sealed record Pointer(CType Pointee) : CType
    {
        public override string ToString() => Pointee + " *";
    }

    public sealed record Array(CType Element, long Length) : CType
    {
        public override string ToString() => $"{Element}[{Length}]";
    }

    public sealed record Function(CType Return, IReadOnlyList<CType> Parameters, bool Variadic) : CType
    {
        public override string ToString() =>
            $"{Return} ({string.Join(", ", Parameters)}{(Variadic ? ", ..." : "")})";
    }

    /// <summary>
    /// Parses a type as clang prints it: specifiers and qualifiers followed by an
    /// abstract declarator (pointers, arrays, function parameter lists, parentheses),
    /// e.g. "const char *const *", "float[16]", "void (*)(void *, int32_t)".
    /// Qualifiers (const, volatile, restrict) are dropped: they do not change the layout.
    /// </summary>
    public static CType Parse(string text)
    {
        var parser = new Parser(text);
        CType type = parser.ParseTypeName();
        parser.ExpectEnd();
        return type;
    }

    private sealed class Parser
    {
        private static readonly HashSet<string> Qualifiers = ["const", "volatile", "restrict", "__restrict", "_Atomic"];
        private static readonly HashSet<string> BuiltinWords =
            ["void", "char", "short", "int", "long", "float", "double", "signed", "unsigned", "_Bool", "__int128"];

        private readonly string _text;
        private readonly List<string> _tokens = [];
        private int _pos;

        public Parser(string text)
        {
            _text = text;
            int i = 0;
            while (i < text.Length)
            {
                char c = text[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (char.IsLetterOrDigit(c) || c == '_')
                {
                    int start = i;
                    while (i < text.Length && (char.IsLetterOrDigit(text[i]) || text[i] == '_')) i++;
                    _tokens.Add(text[start..i]);
                    continue;
                }
                if (text.AsSpan(i).StartsWith("..."))
                {
                    _tokens.Add("...");
                    i += 3;
                    continue;
                }
                if ("*()[],".Contains(c))
                {
                    _tokens.Add(c.ToString());
                    i++;
                    continue;
                }
                throw Error($"unexpected character '{c}'");
            }
        }

        private string? Peek(int ahead = 0) => _pos + ahead < _tokens.Count ? _tokens[_pos + ahead] : null;

        private string Next() => _pos < _tokens.Count ? _tokens[_pos++] : throw Error("unexpected end");

        private void Expect(string token)
        {
            string got = Next();
            if (got != token) throw Error($"expected '{token}' but found '{got}'");
        }

        public void ExpectEnd()
        {
            if (_pos != _tokens.Count) throw Error($"unexpected '{_tokens[_pos]}'");
        }

        private FormatException Error(string what) => new($"cannot parse C type \"{_text}\": {what}");

        public CType ParseTypeName()
        {
            CType specifiers = ParseSpecifiers();
            return ParseAbstractDeclarator()(specifiers);
        }

        private CType ParseSpecifiers()
        {
            var words = new List<string>();
            string? tagged = null, typedefName = null;
            while (Peek() is { } t)
            {
                if (Qualifiers.Contains(t)) { _pos++; continue; }
                if (t is "struct" or "enum" or "union")
                {
                    _pos++;
                    string name = Next();
                    if (name == "(") throw Error($"anonymous {t} types are not supported; give the {t} a name");
                    tagged = $"{t} {name}";
                    continue;
                }
                if (BuiltinWords.Contains(t)) { words.Add(t); _pos++; continue; }
                if (IsIdentifier(t) && tagged is null && typedefName is null && words.Count == 0)
                {
                    typedefName = t;
                    _pos++;
                    continue;
                }
                break;
            }
            int kinds = (tagged is null ? 0 : 1) + (typedefName is null ? 0 : 1) + (words.Count == 0 ? 0 : 1);
            if (kinds != 1) throw Error("expected exactly one base type");
            return new Named(tagged ?? typedefName ?? CanonicalBuiltin(words));
        }

        private static bool IsIdentifier(string t) => t.Length > 0 && (char.IsLetter(t[0]) || t[0] == '_');

        // "unsigned" -> "unsigned int", "long int" -> "long", "signed char" stays, "short int" -> "short".
        private static string CanonicalBuiltin(List<string> words)
        {
            bool unsigned = words.Remove("unsigned");
            bool signed = words.Remove("signed");
            if (words.Count > 1 && words.Contains("int") && (words.Contains("short") || words.Contains("long")))
                words.Remove("int");
            string core = words.Count == 0 ? "int" : string.Join(" ", words);
            if (unsigned) return "unsigned " + core;
            if (signed && core == "char") return "signed char";
            return core;
        }

        // Returns a function that wraps the specifier type according to the declarator.
        private Func<CType, CType> ParseAbstractDeclarator()
        {
            int pointers = 0;
            while (Peek() == "*")
            {
                _pos++;
                pointers++;
                while (Peek() is { } q && Qualifiers.Contains(q)) _pos++;
            }
            Func<CType, CType> inner = t => t;
            if (Peek() == "(" && Peek(1) is "*" or "(" or "[")
            {
                _pos++;
                inner = ParseAbstractDeclarator();
                Expect(")");
            }
            var suffixes = new List<Func<CType, CType>>();
            while (Peek() is "[" or "(")
            {
                if (Next() == "[")
                {
                    string n = Next();
                    if (!long.TryParse(n, out long length)) throw Error($"array length '{n}' is not a number");
                    Expect("]");
                    suffixes.Add(t => new Array(t, length));
                }
                else
                {
                    var (parameters, variadic) = ParseParameters();
                    suffixes.Add(t => new Function(t, parameters, variadic));
                }
            }
            return t =>
            {
                for (int i = 0; i < pointers; i++) t = new Pointer(t);
                for (int i = suffixes.Count - 1; i >= 0; i--) t = suffixes[i](t);
                return inner(t);
            };
        }

        private (IReadOnlyList<CType>, bool) ParseParameters()
        {
            var list = new List<CType>();
            bool variadic = false;
            if (Peek() == ")") { _pos++; return (list, false); }
            while (true)
            {
                if (Peek() == "...") { _pos++; variadic = true; }
                else list.Add(ParseTypeName());
                string sep = Next();
                if (sep == ")") break;
                if (sep != ",") throw Error($"expected ',' or ')' in a parameter list, found '{sep}'");
            }
            if (list is [Named { Name: "void" }]) list.Clear();
            return (list, variadic);
        }
    }
}
